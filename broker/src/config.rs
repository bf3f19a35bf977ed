//! Broker configuration: command-line flags, `STARLING_*` environment
//! variables and a TOML file, merged with that precedence over the defaults.
//!
//! Every setting is an `Option` in both the CLI and the file layer so that
//! "not given" can be told apart from "given the default value"; [`Config`]
//! holds the merged, validated result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// What a full session queue does with one more message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Drop the oldest queued message to make room (fresh data wins).
    Oldest,
    /// Drop the message that does not fit (what was queued first wins).
    Newest,
}

/// Where a cluster keeps track of which node has each client's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClientDirectoryKind {
    /// Each client id's home node (rendezvous hashing over the serving
    /// nodes) keeps it in memory: no etcd write per connect, no ceiling
    /// from etcd's size.
    Home,
    /// One etcd key per session (`clients/<id>`), the first design
    /// (docs/adr/0003): bounded by etcd's quota and write rate.
    Etcd,
}

/// The shortest admin token accepted: one a person would type is guessable.
pub const MIN_ADMIN_TOKEN_LENGTH: usize = 16;

/// The highest `max_topic_levels` accepted. Walks of the topic tries may
/// recurse once per level; this keeps their depth a small constant that
/// no configuration, and no input, can raise.
pub const MAX_TOPIC_LEVELS_CEILING: usize = 1024;

/// The length and level limits every topic name and filter that enters
/// the broker obeys: from a client (PUBLISH, SUBSCRIBE, will), from etcd
/// (retained messages, routes) or from a peer (a moved session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLimits {
    pub max_length: usize,
    pub max_levels: usize,
}

impl TopicLimits {
    /// Whether `topic` (a name or a filter, `$share/<group>/` included)
    /// is within both limits.
    pub fn admit(&self, topic: &str) -> bool {
        // A topic of n bytes has at most n + 1 levels: only one at least as
        // long as the level limit needs its levels counted.
        topic.len() <= self.max_length
            && (topic.len() < self.max_levels
                || starling_codec::topic::level_count(topic) <= self.max_levels)
    }
}

/// Whether `topic` is `$SYS` or below it: the broker's own topics.
pub fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The merged configuration the broker runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_pending_connects: usize,
    pub incomplete_packet_timeout_secs: u64,
    pub max_read_buffer_bytes: usize,
    pub max_queued_bytes: usize,
    pub queue_qos0: bool,
    pub queue_drop_policy: DropPolicy,
    pub max_keep_alive: u16,
    pub max_session_expiry: u32,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions_per_client: usize,
    pub client_dollar_topics: bool,
    pub max_sessions: usize,
    pub memory_high_watermark_bytes: u64,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub topic_alias_maximum: u16,
    pub max_awaiting_rel: usize,
    pub connect_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub log_level: String,
    /// This node's id in the cluster (no '/'); also its name in etcd keys.
    pub node_id: String,
    /// Cluster name: the etcd key prefix is `/starling/<cluster>/`.
    pub cluster: String,
    /// etcd endpoints; non-empty turns cluster mode on.
    pub etcd: Vec<String>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// PEM CA bundle that signs etcd's server certificate (turns TLS on).
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's client-cert auth.
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// Where the inter-node gRPC service listens.
    pub peer_listen: SocketAddr,
    /// The address other nodes use to reach `peer_listen` (default: it).
    pub peer_advertise: Option<String>,
    /// Shared secret peers present to each other.
    pub peer_token: Option<String>,
    /// PEM certificate (chain) this node presents to its peers, both ways.
    pub peer_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `peer_tls_cert_file`.
    pub peer_tls_key_file: Option<PathBuf>,
    /// PEM CA that every peer's certificate must chain to.
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Name every peer's certificate must carry (default: the host of the
    /// peer's address).
    pub peer_tls_server_name: Option<String>,
    /// How often the peer TLS files are read again to pick up a renewal.
    pub peer_tls_reload_secs: u64,
    /// TTL of this node's etcd lease: how fast the cluster forgets it.
    pub lease_ttl_secs: u64,
    pub peer_lapse_grace_secs: u64,
    /// Admin HTTP API (health, readiness, node status, drain); off if unset.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for the admin API's calls that change state or reveal
    /// client data (also `STARLING_ADMIN_TOKEN`); see [`Config::admin_token`].
    pub admin_token: Option<String>,
    /// A file holding that token (a mounted Secret); wins over `admin_token`.
    pub admin_token_file: Option<PathBuf>,
    /// Server Reference sent to v5 clients told to use another server
    /// (drain), e.g. the cluster's Service address.
    pub server_reference: Option<String>,
    /// Clients disconnected per second while draining.
    pub drain_rate: u32,
    /// Seconds a drain waits for disconnected clients to reconnect elsewhere
    /// (taking their sessions along) before handing the remaining sessions
    /// to other nodes.
    pub drain_session_wait_secs: u64,
    /// Cluster: a QoS 1/2 publisher's PUBACK/PUBREC waits until every node
    /// the message goes to acknowledged it.
    pub forward_ack: bool,
    /// Cluster: a SUBACK waits until every other node's route index holds
    /// the subscription's route ("subscribed" means "reachable from every
    /// node").
    pub route_sync: bool,
    /// Longest a SUBACK waits for route sync; it is sent after that anyway.
    pub route_sync_timeout_secs: u64,
    /// A connection silent and with nothing to deliver for this long gives
    /// up its task until something happens (0: never).
    pub park_idle_after_ms: u64,
    /// Cluster: wildcard filters advertised in place of the filters they
    /// cover (per-device subscriptions as one route per node).
    pub route_aggregates: Vec<String>,
    /// Cluster: where the node of each client's session is looked up.
    pub client_directory: ClientDirectoryKind,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_pending_connects: 4096,
            incomplete_packet_timeout_secs: 30,
            max_read_buffer_bytes: 256 * 1024 * 1024,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_qos0: true,
            queue_drop_policy: DropPolicy::Oldest,
            max_keep_alive: 65_535,
            max_session_expiry: 7200,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            client_dollar_topics: false,
            max_sessions: 1_000_000,
            memory_high_watermark_bytes: 0,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 512 * 1024 * 1024,
            topic_alias_maximum: 1024,
            max_awaiting_rel: 100,
            connect_timeout_secs: 10,
            shutdown_timeout_secs: 10,
            log_level: "info".to_string(),
            node_id: default_node_id(),
            cluster: "starling".to_string(),
            etcd: Vec::new(),
            etcd_username: None,
            etcd_password: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            peer_advertise: None,
            peer_token: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
            peer_tls_server_name: None,
            peer_tls_reload_secs: 30,
            lease_ttl_secs: 5,
            peer_lapse_grace_secs: 60,
            admin_listen: None,
            admin_token: None,
            admin_token_file: None,
            server_reference: None,
            drain_rate: 500,
            drain_session_wait_secs: 5,
            forward_ack: true,
            route_sync: false,
            route_sync_timeout_secs: 5,
            park_idle_after_ms: 2000,
            route_aggregates: Vec::new(),
            client_directory: ClientDirectoryKind::Home,
        }
    }
}

impl Config {
    /// How long a connection stays idle before it parks, if it ever does.
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_length: self.max_topic_length,
            max_levels: self.max_topic_levels,
        }
    }

    /// Whether a client may publish, retain or leave a will on `topic`:
    /// never on `$SYS/…` (nobody may forge the broker's own reports), on
    /// other `$` topics only with `client_dollar_topics` (MQTT 5.0 §4.7.2:
    /// they are the server's).
    pub fn client_may_publish(&self, topic: &str) -> bool {
        !topic.starts_with('$') || (self.client_dollar_topics && !is_sys_topic(topic))
    }

    /// The admin API token: the content of `admin_token_file` (surrounding
    /// white space trimmed) or `admin_token`; `None` when neither is set.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let (key, token) = match (&self.admin_token_file, &self.admin_token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Invalid {
                    key: "admin_token_file",
                    problem: format!("cannot read {}: {error}", path.display()),
                })?;
                ("admin_token_file", text.trim().to_string())
            }
            (None, Some(token)) => ("admin_token", token.clone()),
            (None, None) => return Ok(None),
        };
        if token.len() < MIN_ADMIN_TOKEN_LENGTH {
            return Err(ConfigError::Invalid {
                key,
                problem: format!(
                    "the token must be at least {MIN_ADMIN_TOKEN_LENGTH} characters long"
                ),
            });
        }
        Ok(Some(token))
    }

    pub fn park_idle_after(&self) -> Option<std::time::Duration> {
        (self.park_idle_after_ms > 0)
            .then(|| std::time::Duration::from_millis(self.park_idle_after_ms))
    }
}

/// The host name (a StatefulSet pod's name is its stable node id).
fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "starling".to_string())
}

impl Config {
    pub fn cluster_mode(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// The peer address advertised to other nodes.
    pub fn peer_endpoint(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }
}

/// A configuration that cannot be used, naming the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The settings that can appear in the TOML file, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub max_connections: Option<usize>,
    pub max_packet_size: Option<u32>,
    pub max_inflight: Option<u16>,
    pub max_queued_messages: Option<usize>,
    pub max_pending_connects: Option<usize>,
    pub incomplete_packet_timeout_secs: Option<u64>,
    pub max_read_buffer_bytes: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub queue_qos0: Option<bool>,
    pub queue_drop_policy: Option<DropPolicy>,
    pub max_keep_alive: Option<u16>,
    pub max_session_expiry: Option<u32>,
    pub max_topic_length: Option<usize>,
    pub max_topic_levels: Option<usize>,
    pub max_subscriptions_per_client: Option<usize>,
    pub client_dollar_topics: Option<bool>,
    pub max_sessions: Option<usize>,
    pub memory_high_watermark_bytes: Option<u64>,
    pub max_retained_messages: Option<usize>,
    pub max_retained_bytes: Option<usize>,
    pub topic_alias_maximum: Option<u16>,
    pub max_awaiting_rel: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub log_level: Option<String>,
    pub node_id: Option<String>,
    pub cluster: Option<String>,
    pub etcd: Option<Vec<String>>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub peer_listen: Option<SocketAddr>,
    pub peer_advertise: Option<String>,
    pub peer_token: Option<String>,
    pub peer_tls_cert_file: Option<PathBuf>,
    pub peer_tls_key_file: Option<PathBuf>,
    pub peer_tls_ca_file: Option<PathBuf>,
    pub peer_tls_server_name: Option<String>,
    pub peer_tls_reload_secs: Option<u64>,
    pub lease_ttl_secs: Option<u64>,
    pub peer_lapse_grace_secs: Option<u64>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub server_reference: Option<String>,
    pub drain_rate: Option<u32>,
    pub drain_session_wait_secs: Option<u64>,
    pub forward_ack: Option<bool>,
    pub route_sync: Option<bool>,
    pub route_sync_timeout_secs: Option<u64>,
    pub park_idle_after_ms: Option<u64>,
    pub route_aggregates: Option<Vec<String>>,
    pub client_directory: Option<ClientDirectoryKind>,
}

/// Command-line flags; each also reads a `STARLING_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(name = "starling", version, about = "Starling MQTT broker")]
pub struct Cli {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "STARLING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT TCP listener address; repeat for several. Default 0.0.0.0:1883.
    #[arg(
        long,
        env = "STARLING_LISTEN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// Most simultaneous client connections.
    #[arg(long, env = "STARLING_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest packet accepted from a client, in bytes (announced to v5 clients).
    #[arg(long, env = "STARLING_MAX_PACKET_SIZE", value_name = "BYTES")]
    pub max_packet_size: Option<u32>,
    /// Receive Maximum: unacknowledged QoS 1/2 messages in flight per direction.
    #[arg(long, env = "STARLING_MAX_INFLIGHT", value_name = "N")]
    pub max_inflight: Option<u16>,
    /// Most messages queued per session beyond the inflight window.
    #[arg(long, env = "STARLING_MAX_QUEUED_MESSAGES", value_name = "N")]
    pub max_queued_messages: Option<usize>,
    /// Most connections accepted that have not completed CONNECT yet; more are closed at once.
    #[arg(long, env = "STARLING_MAX_PENDING_CONNECTS", value_name = "N")]
    pub max_pending_connects: Option<usize>,
    /// Seconds a packet may take to arrive once its first byte has (whatever the keep-alive).
    #[arg(
        long,
        env = "STARLING_INCOMPLETE_PACKET_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub incomplete_packet_timeout_secs: Option<u64>,
    /// Broker-wide bytes of read buffers beyond 64 KiB each (large packets arriving).
    #[arg(long, env = "STARLING_MAX_READ_BUFFER_BYTES", value_name = "BYTES")]
    pub max_read_buffer_bytes: Option<usize>,
    /// Most payload and topic bytes queued per session beyond the inflight window.
    #[arg(long, env = "STARLING_MAX_QUEUED_BYTES", value_name = "BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// Queue QoS 0 messages for disconnected persistent sessions.
    #[arg(long, env = "STARLING_QUEUE_QOS0", value_name = "BOOL")]
    pub queue_qos0: Option<bool>,
    /// Which message a full session queue drops.
    #[arg(long, env = "STARLING_QUEUE_DROP_POLICY", value_name = "POLICY")]
    pub queue_drop_policy: Option<DropPolicy>,
    /// Largest keep-alive granted, in seconds (v5 Server Keep Alive).
    #[arg(long, env = "STARLING_MAX_KEEP_ALIVE", value_name = "SECS")]
    pub max_keep_alive: Option<u16>,
    /// Longest session expiry granted, in seconds; also the expiry of 3.1.1
    /// persistent sessions.
    #[arg(long, env = "STARLING_MAX_SESSION_EXPIRY", value_name = "SECS")]
    pub max_session_expiry: Option<u32>,
    /// Longest topic name or filter, in bytes.
    #[arg(long, env = "STARLING_MAX_TOPIC_LENGTH", value_name = "N")]
    pub max_topic_length: Option<usize>,
    /// Most levels in a topic name or filter.
    #[arg(long, env = "STARLING_MAX_TOPIC_LEVELS", value_name = "N")]
    pub max_topic_levels: Option<usize>,
    /// Most subscriptions per client (0: unlimited).
    #[arg(long, env = "STARLING_MAX_SUBSCRIPTIONS_PER_CLIENT", value_name = "N")]
    pub max_subscriptions_per_client: Option<usize>,
    /// Let clients publish, retain and leave wills on `$` topics other
    /// than `$SYS/…` (which stays the broker's own).
    #[arg(long, env = "STARLING_CLIENT_DOLLAR_TOPICS", value_name = "BOOL")]
    pub client_dollar_topics: Option<bool>,
    /// Most retained messages (topics) stored; a new one beyond is refused (v5: 0x97).
    #[arg(long, env = "STARLING_MAX_RETAINED_MESSAGES", value_name = "N")]
    pub max_retained_messages: Option<usize>,
    /// Most payload and topic bytes of retained messages stored; beyond, refused (v5: 0x97).
    #[arg(long, env = "STARLING_MAX_RETAINED_BYTES", value_name = "BYTES")]
    pub max_retained_bytes: Option<usize>,
    /// Most sessions (connected or waiting for their client); a CONNECT that would make one more is refused (v5: 0x97).
    #[arg(long, env = "STARLING_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Resident size above which new connections are refused and publishers slowed (0: 80% of the cgroup's or machine's memory).
    #[arg(
        long,
        env = "STARLING_MEMORY_HIGH_WATERMARK_BYTES",
        value_name = "BYTES"
    )]
    pub memory_high_watermark_bytes: Option<u64>,
    /// Topic Alias Maximum announced to v5 clients (0 disables aliases).
    #[arg(long, env = "STARLING_TOPIC_ALIAS_MAXIMUM", value_name = "N")]
    pub topic_alias_maximum: Option<u16>,
    /// Most incoming QoS 2 messages awaiting PUBREL per session.
    #[arg(long, env = "STARLING_MAX_AWAITING_REL", value_name = "N")]
    pub max_awaiting_rel: Option<usize>,
    /// Seconds a new connection has to send CONNECT.
    #[arg(long, env = "STARLING_CONNECT_TIMEOUT_SECS", value_name = "SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Seconds graceful shutdown waits for connections to close.
    #[arg(long, env = "STARLING_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "STARLING_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// This node's id (default: the host name). Must not contain '/'.
    #[arg(long, env = "STARLING_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Cluster name; nodes of one cluster share `/starling/<NAME>/` in etcd.
    #[arg(long, env = "STARLING_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// etcd endpoints (comma-separated or repeated); turns cluster mode on.
    #[arg(long, env = "STARLING_ETCD", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// etcd user name (with --etcd-password).
    #[arg(long, env = "STARLING_ETCD_USERNAME", value_name = "USER")]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(
        long,
        env = "STARLING_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// PEM CA bundle for etcd's server certificate (turns TLS to etcd on).
    #[arg(long, env = "STARLING_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key-file).
    #[arg(long, env = "STARLING_ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of the etcd client certificate.
    #[arg(long, env = "STARLING_ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Inter-node gRPC listener.
    #[arg(long, env = "STARLING_PEER_LISTEN", value_name = "HOST:PORT")]
    pub peer_listen: Option<SocketAddr>,
    /// Address other nodes use to reach this node's peer listener.
    #[arg(long, env = "STARLING_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// Shared secret that peers present to each other.
    #[arg(
        long,
        env = "STARLING_PEER_TOKEN",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub peer_token: Option<String>,
    /// PEM certificate this node presents to peers (mutual TLS on the peer port).
    #[arg(long, env = "STARLING_PEER_TLS_CERT_FILE", value_name = "FILE")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert-file.
    #[arg(long, env = "STARLING_PEER_TLS_KEY_FILE", value_name = "FILE")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// PEM CA every peer's certificate must chain to.
    #[arg(long, env = "STARLING_PEER_TLS_CA_FILE", value_name = "FILE")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Name every peer's certificate must carry (default: the peer address's host).
    #[arg(long, env = "STARLING_PEER_TLS_SERVER_NAME", value_name = "NAME")]
    pub peer_tls_server_name: Option<String>,
    /// Seconds between reads of the peer TLS files (a renewed certificate is used without a restart).
    #[arg(long, env = "STARLING_PEER_TLS_RELOAD_SECS", value_name = "SECS")]
    pub peer_tls_reload_secs: Option<u64>,
    /// Cluster: seconds a node whose lease ran out while serving keeps its routes here, so that publishes for its subscribers fail instead of finding nobody.
    #[arg(long, env = "STARLING_PEER_LAPSE_GRACE_SECS", value_name = "SECS")]
    pub peer_lapse_grace_secs: Option<u64>,
    /// TTL of this node's etcd lease, in seconds.
    #[arg(long, env = "STARLING_LEASE_TTL_SECS", value_name = "SECS")]
    pub lease_ttl_secs: Option<u64>,
    /// Admin HTTP listener (health, readiness, node status, drain).
    #[arg(long, env = "STARLING_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API asks of calls that change state or reveal
    /// client data (drain, client lookups). Without one they are refused.
    #[arg(
        long,
        env = "STARLING_ADMIN_TOKEN",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// File holding the admin API token (wins over --admin-token).
    #[arg(long, env = "STARLING_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Server Reference given to v5 clients sent away by a drain.
    #[arg(long, env = "STARLING_SERVER_REFERENCE", value_name = "HOST:PORT")]
    pub server_reference: Option<String>,
    /// Clients disconnected per second while draining.
    #[arg(long, env = "STARLING_DRAIN_RATE", value_name = "N")]
    pub drain_rate: Option<u32>,
    /// Seconds a drain waits for clients to take their sessions elsewhere
    /// before handing the rest to other nodes.
    #[arg(long, env = "STARLING_DRAIN_SESSION_WAIT_SECS", value_name = "SECS")]
    pub drain_session_wait_secs: Option<u64>,
    /// Cluster: PUBACK/PUBREC only once every target node has the message.
    #[arg(long, env = "STARLING_FORWARD_ACK", value_name = "BOOL")]
    pub forward_ack: Option<bool>,
    /// Cluster: SUBACK only once every node's route index has the route.
    #[arg(long, env = "STARLING_ROUTE_SYNC", value_name = "BOOL")]
    pub route_sync: Option<bool>,
    /// Longest a SUBACK waits for route sync, in seconds.
    #[arg(long, env = "STARLING_ROUTE_SYNC_TIMEOUT_SECS", value_name = "SECS")]
    pub route_sync_timeout_secs: Option<u64>,
    /// Idle time after which a connection gives up its task, in ms (0: never).
    #[arg(long, env = "STARLING_PARK_IDLE_AFTER_MS", value_name = "MS")]
    pub park_idle_after_ms: Option<u64>,
    /// Cluster: a wildcard filter advertised in place of the filters it
    /// covers (repeat, or comma-separated).
    #[arg(
        long = "route-aggregate",
        env = "STARLING_ROUTE_AGGREGATES",
        value_name = "FILTER",
        value_delimiter = ','
    )]
    pub route_aggregates: Vec<String>,
    /// Cluster: where the node of each client's session is kept: `home`
    /// (the client id's home node, in memory) or `etcd`.
    #[arg(long, env = "STARLING_CLIENT_DIRECTORY", value_name = "KIND")]
    pub client_directory: Option<ClientDirectoryKind>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

impl Config {
    /// Merges flags/env over the file over the defaults, then validates.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    pub fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let listen = if !cli.listen.is_empty() {
            cli.listen
        } else {
            file.listen.unwrap_or(d.listen)
        };
        let config = Config {
            listen,
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_packet_size: cli
                .max_packet_size
                .or(file.max_packet_size)
                .unwrap_or(d.max_packet_size),
            max_inflight: cli
                .max_inflight
                .or(file.max_inflight)
                .unwrap_or(d.max_inflight),
            max_queued_messages: cli
                .max_queued_messages
                .or(file.max_queued_messages)
                .unwrap_or(d.max_queued_messages),
            max_pending_connects: cli
                .max_pending_connects
                .or(file.max_pending_connects)
                .unwrap_or(d.max_pending_connects),
            incomplete_packet_timeout_secs: cli
                .incomplete_packet_timeout_secs
                .or(file.incomplete_packet_timeout_secs)
                .unwrap_or(d.incomplete_packet_timeout_secs),
            max_read_buffer_bytes: cli
                .max_read_buffer_bytes
                .or(file.max_read_buffer_bytes)
                .unwrap_or(d.max_read_buffer_bytes),
            max_queued_bytes: cli
                .max_queued_bytes
                .or(file.max_queued_bytes)
                .unwrap_or(d.max_queued_bytes),
            queue_qos0: cli.queue_qos0.or(file.queue_qos0).unwrap_or(d.queue_qos0),
            queue_drop_policy: cli
                .queue_drop_policy
                .or(file.queue_drop_policy)
                .unwrap_or(d.queue_drop_policy),
            max_keep_alive: cli
                .max_keep_alive
                .or(file.max_keep_alive)
                .unwrap_or(d.max_keep_alive),
            max_session_expiry: cli
                .max_session_expiry
                .or(file.max_session_expiry)
                .unwrap_or(d.max_session_expiry),
            max_topic_length: cli
                .max_topic_length
                .or(file.max_topic_length)
                .unwrap_or(d.max_topic_length),
            max_topic_levels: cli
                .max_topic_levels
                .or(file.max_topic_levels)
                .unwrap_or(d.max_topic_levels),
            max_subscriptions_per_client: cli
                .max_subscriptions_per_client
                .or(file.max_subscriptions_per_client)
                .unwrap_or(d.max_subscriptions_per_client),
            max_retained_messages: cli
                .max_retained_messages
                .or(file.max_retained_messages)
                .unwrap_or(d.max_retained_messages),
            max_retained_bytes: cli
                .max_retained_bytes
                .or(file.max_retained_bytes)
                .unwrap_or(d.max_retained_bytes),
            max_sessions: cli
                .max_sessions
                .or(file.max_sessions)
                .unwrap_or(d.max_sessions),
            memory_high_watermark_bytes: cli
                .memory_high_watermark_bytes
                .or(file.memory_high_watermark_bytes)
                .unwrap_or(d.memory_high_watermark_bytes),
            client_dollar_topics: cli
                .client_dollar_topics
                .or(file.client_dollar_topics)
                .unwrap_or(d.client_dollar_topics),
            topic_alias_maximum: cli
                .topic_alias_maximum
                .or(file.topic_alias_maximum)
                .unwrap_or(d.topic_alias_maximum),
            max_awaiting_rel: cli
                .max_awaiting_rel
                .or(file.max_awaiting_rel)
                .unwrap_or(d.max_awaiting_rel),
            connect_timeout_secs: cli
                .connect_timeout_secs
                .or(file.connect_timeout_secs)
                .unwrap_or(d.connect_timeout_secs),
            shutdown_timeout_secs: cli
                .shutdown_timeout_secs
                .or(file.shutdown_timeout_secs)
                .unwrap_or(d.shutdown_timeout_secs),
            log_level: cli.log_level.or(file.log_level).unwrap_or(d.log_level),
            node_id: cli.node_id.or(file.node_id).unwrap_or(d.node_id),
            cluster: cli.cluster.or(file.cluster).unwrap_or(d.cluster),
            etcd: if cli.etcd.is_empty() {
                file.etcd.unwrap_or(d.etcd)
            } else {
                cli.etcd
            },
            etcd_username: cli.etcd_username.or(file.etcd_username),
            etcd_password: cli.etcd_password.or(file.etcd_password),
            etcd_ca_file: cli.etcd_ca_file.or(file.etcd_ca_file),
            etcd_cert_file: cli.etcd_cert_file.or(file.etcd_cert_file),
            etcd_key_file: cli.etcd_key_file.or(file.etcd_key_file),
            peer_listen: cli
                .peer_listen
                .or(file.peer_listen)
                .unwrap_or(d.peer_listen),
            peer_advertise: cli.peer_advertise.or(file.peer_advertise),
            peer_token: cli.peer_token.or(file.peer_token),
            peer_tls_cert_file: cli.peer_tls_cert_file.or(file.peer_tls_cert_file),
            peer_tls_key_file: cli.peer_tls_key_file.or(file.peer_tls_key_file),
            peer_tls_ca_file: cli.peer_tls_ca_file.or(file.peer_tls_ca_file),
            peer_tls_server_name: cli.peer_tls_server_name.or(file.peer_tls_server_name),
            peer_tls_reload_secs: cli
                .peer_tls_reload_secs
                .or(file.peer_tls_reload_secs)
                .unwrap_or(d.peer_tls_reload_secs),
            peer_lapse_grace_secs: cli
                .peer_lapse_grace_secs
                .or(file.peer_lapse_grace_secs)
                .unwrap_or(d.peer_lapse_grace_secs),
            lease_ttl_secs: cli
                .lease_ttl_secs
                .or(file.lease_ttl_secs)
                .unwrap_or(d.lease_ttl_secs),
            admin_listen: cli.admin_listen.or(file.admin_listen),
            admin_token: cli.admin_token.or(file.admin_token),
            admin_token_file: cli.admin_token_file.or(file.admin_token_file),
            server_reference: cli.server_reference.or(file.server_reference),
            drain_rate: cli.drain_rate.or(file.drain_rate).unwrap_or(d.drain_rate),
            drain_session_wait_secs: cli
                .drain_session_wait_secs
                .or(file.drain_session_wait_secs)
                .unwrap_or(d.drain_session_wait_secs),
            forward_ack: cli
                .forward_ack
                .or(file.forward_ack)
                .unwrap_or(d.forward_ack),
            route_sync: cli.route_sync.or(file.route_sync).unwrap_or(d.route_sync),
            route_sync_timeout_secs: cli
                .route_sync_timeout_secs
                .or(file.route_sync_timeout_secs)
                .unwrap_or(d.route_sync_timeout_secs),
            park_idle_after_ms: cli
                .park_idle_after_ms
                .or(file.park_idle_after_ms)
                .unwrap_or(d.park_idle_after_ms),
            route_aggregates: if cli.route_aggregates.is_empty() {
                file.route_aggregates.unwrap_or(d.route_aggregates)
            } else {
                cli.route_aggregates
            },
            client_directory: cli
                .client_directory
                .or(file.client_directory)
                .unwrap_or(d.client_directory),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        }
        if self.listen.is_empty() {
            return invalid("listen", "at least one address is needed");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        // A PUBLISH with a one-byte topic needs 5 bytes; anything below 16
        // cannot carry a useful packet and is certainly a mistake.
        if self.max_packet_size < 16 || self.max_packet_size > 268_435_460 {
            return invalid("max_packet_size", "must be between 16 and 268435460 bytes");
        }
        if self.max_inflight == 0 {
            return invalid(
                "max_inflight",
                "must be at least 1 (MQTT 5 forbids a Receive Maximum of 0)",
            );
        }
        if self.max_queued_messages == 0 {
            return invalid("max_queued_messages", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return invalid("max_sessions", "must be at least 1");
        }
        if self.max_retained_messages == 0 {
            return invalid("max_retained_messages", "must be at least 1");
        }
        if self.max_pending_connects == 0 {
            return invalid("max_pending_connects", "must be at least 1");
        }
        if self.incomplete_packet_timeout_secs == 0 || self.incomplete_packet_timeout_secs > 3600 {
            return invalid(
                "incomplete_packet_timeout_secs",
                "must be between 1 and 3600",
            );
        }
        // One packet of the largest size must fit, or large packets could
        // never be read at all.
        if self.max_read_buffer_bytes < self.max_packet_size as usize {
            return invalid(
                "max_read_buffer_bytes",
                "must be at least max_packet_size, or the largest packets could never be read",
            );
        }
        if self.max_queued_bytes > u32::MAX as usize {
            return invalid("max_queued_bytes", "must be at most 4294967295 (4 GiB)");
        }
        if self.max_queued_bytes < self.max_packet_size as usize {
            return invalid(
                "max_queued_bytes",
                "must be at least max_packet_size, or the largest messages could never be queued",
            );
        }
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return invalid("max_topic_length", "must be between 1 and 65535");
        }
        if self.max_topic_levels == 0 || self.max_topic_levels > MAX_TOPIC_LEVELS_CEILING {
            return invalid(
                "max_topic_levels",
                &format!("must be between 1 and {MAX_TOPIC_LEVELS_CEILING}"),
            );
        }
        if self.max_awaiting_rel == 0 {
            return invalid("max_awaiting_rel", "must be at least 1");
        }
        if self.connect_timeout_secs == 0 {
            return invalid("connect_timeout_secs", "must be at least 1");
        }
        if self.node_id.is_empty() || self.node_id.contains('/') {
            return invalid("node_id", "must be non-empty and free of '/'");
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return invalid("cluster", "must be non-empty and free of '/'");
        }
        if self.drain_rate == 0 {
            return invalid("drain_rate", "must be at least 1 client per second");
        }
        for pattern in &self.route_aggregates {
            match starling_codec::topic::parse_filter(pattern) {
                Err(error) => {
                    return invalid(
                        "route_aggregates",
                        &format!("{pattern:?} is not a topic filter: {error}"),
                    );
                }
                Ok(parsed) if parsed.share_group.is_some() => {
                    return invalid(
                        "route_aggregates",
                        &format!("{pattern:?}: shared subscriptions are not aggregated"),
                    );
                }
                Ok(_) if !pattern.split('/').any(|level| level == "+" || level == "#") => {
                    return invalid(
                        "route_aggregates",
                        &format!("{pattern:?} has no wildcard: it would cover only itself"),
                    );
                }
                Ok(_) => {}
            }
        }
        if self.route_sync_timeout_secs == 0 {
            return invalid("route_sync_timeout_secs", "must be at least 1");
        }
        if self.lease_ttl_secs < 2 {
            return invalid("lease_ttl_secs", "must be at least 2");
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return invalid(
                "etcd_cert_file",
                "etcd_cert_file and etcd_key_file go together",
            );
        }
        if self.etcd_cert_file.is_some() && self.etcd_ca_file.is_none() {
            return invalid(
                "etcd_ca_file",
                "a client certificate needs TLS: set etcd_ca_file too",
            );
        }
        let peer_tls = [
            ("peer_tls_cert_file", self.peer_tls_cert_file.is_some()),
            ("peer_tls_key_file", self.peer_tls_key_file.is_some()),
            ("peer_tls_ca_file", self.peer_tls_ca_file.is_some()),
        ];
        if let Some((missing, _)) = peer_tls.iter().find(|(_, set)| !set)
            && peer_tls.iter().any(|(_, set)| *set)
        {
            return invalid(
                missing,
                "peer TLS needs peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file together",
            );
        }
        if self.peer_tls_reload_secs == 0 {
            return invalid("peer_tls_reload_secs", "must be at least 1");
        }
        if self.peer_tls_server_name.is_some() && self.peer_tls_ca_file.is_none() {
            return invalid(
                "peer_tls_server_name",
                "only means something with peer TLS: set peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file",
            );
        }
        if self.etcd_password.is_some() && self.etcd_username.is_none() {
            return invalid("etcd_password", "needs etcd_username too");
        }
        self.admin_token()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return invalid("log_level", "not a level or tracing filter directive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file = parse_file("max_inflight = 10\nmax_queued_messages = 5\n").unwrap();
        let cli = Cli::try_parse_from(["starling", "--max-inflight", "20"]).unwrap();
        let config = Config::merge(cli, file).unwrap();
        assert_eq!(config.max_inflight, 20);
        assert_eq!(config.max_queued_messages, 5);
        assert_eq!(config.max_packet_size, Config::default().max_packet_size);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let err = parse_file("max_inflihgt = 3\n").unwrap_err().to_string();
        assert!(err.contains("max_inflihgt"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse_file("max_inflight = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn route_aggregates_must_be_wildcard_filters() {
        for (pattern, problem) in [
            ("devices/#/cmd", "not a topic filter"),
            ("devices/1/cmd", "no wildcard"),
            ("$share/g/devices/+", "shared subscriptions"),
        ] {
            let cli = Cli::try_parse_from(["starling", "--route-aggregate", pattern]).unwrap();
            let err = Config::merge(cli, FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("route_aggregates") && err.contains(problem),
                "{err}"
            );
        }
        let cli =
            Cli::try_parse_from(["starling", "--route-aggregate", "devices/+/cmd/#,a/#"]).unwrap();
        let config = Config::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(config.route_aggregates, ["devices/+/cmd/#", "a/#"]);
    }

    #[test]
    fn peer_tls_files_come_together() {
        let cli = Cli::try_parse_from([
            "starling",
            "--peer-tls-cert-file",
            "/c.pem",
            "--peer-tls-key-file",
            "/k.pem",
        ])
        .unwrap();
        let err = Config::merge(cli, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer_tls_ca_file"), "{err}");
        let cli = Cli::try_parse_from(["starling", "--peer-tls-server-name", "peers"]).unwrap();
        let err = Config::merge(cli, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer_tls_server_name"), "{err}");
    }

    #[test]
    fn invalid_value_is_named() {
        let cli = Cli::try_parse_from(["starling", "--max-inflight", "0"]).unwrap();
        let err = Config::merge(cli, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn example_file_parses_and_documents_the_defaults() {
        let file = parse_file(include_str!("../../starling.example.toml")).unwrap();
        let config = Config::merge(Cli::default(), file).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn listen_is_repeatable() {
        let cli = Cli::try_parse_from([
            "starling",
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:2",
        ])
        .unwrap();
        let config = Config::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(config.listen.len(), 2);
    }
}
