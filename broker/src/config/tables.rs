//! Every setting of the broker, declared once, table by table. A doc
//! comment here is the setting's documentation: `--help`, the reference in
//! docs/configuration.md and starling.example.toml are made from it (a
//! test keeps the two files in step).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::settings::{flag_value_by_name, settings};

/// What a full session queue does with one more message.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Drop the oldest queued message to make room (fresh data wins).
    Oldest,
    /// Drop the message that does not fit (what was queued first wins).
    Newest,
}
flag_value_by_name!(DropPolicy, "POLICY");

/// Where a cluster keeps track of which node has each client's session.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
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
flag_value_by_name!(ClientDirectoryKind, "KIND");

settings! {
    /// Where clients connect.
    pub struct Listeners in "listeners" {
        /// MQTT over TCP: the addresses to listen on (repeat the flag, or
        /// separate them with commas, for several).
        listen: Vec<SocketAddr> = vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
    }
}

settings! {
    /// What the broker holds at most, whatever its clients do. Each bound
    /// is refused with a reason code, never by running out of memory; see
    /// "Limits and the memory they allow" in docs/configuration.md.
    pub struct Limits in "limits" {
        /// Most simultaneous client connections; more get CONNACK 0x97
        /// (v5) or return code 3 (3.1.1).
        max_connections: usize = 100_000,
        /// Connections accepted that have not completed CONNECT yet (each
        /// holds a file and a task until `connect_timeout_secs`); more are
        /// closed at once.
        max_pending_connects: usize = 4096,
        /// Seconds a new connection has to send CONNECT.
        connect_timeout_secs: u64 = 10,
        /// Sessions (connected or waiting for their client) at most; a
        /// CONNECT that would make one more is refused (v5: 0x97; 3.1.1:
        /// 3). Resuming one is not.
        max_sessions: usize = 1_000_000,
        /// Largest packet accepted from a client, in bytes (16 to
        /// 268435460). Announced to v5 clients as Maximum Packet Size; a
        /// larger packet closes the connection (0x95).
        max_packet_size: u32 = 1024 * 1024,
        /// Seconds a packet may take to arrive once its first byte has,
        /// whatever the keep-alive (a client that stops halfway through a
        /// large packet is disconnected, v5: 0x8D). 1 to 3600.
        incomplete_packet_timeout_secs: u64 = 30,
        /// Bytes all read buffers together may hold beyond 64 KiB each
        /// (large packets arriving); a connection that would go over is
        /// closed (v5: 0x89). At least `max_packet_size`.
        max_read_buffer_bytes: usize = 256 * 1024 * 1024,
        /// Longest topic name or filter, in bytes (1 to 65535). Holds for
        /// every topic: PUBLISH, SUBSCRIBE, wills, and what is read from
        /// etcd.
        max_topic_length: usize = 65_535,
        /// Most levels in a topic name or filter (1 to 1024).
        max_topic_levels: usize = 128,
        /// Most subscriptions per client (SUBACK 0x97 beyond); 0 means
        /// unlimited.
        max_subscriptions_per_client: usize = 1000,
        /// Retained messages (topics) stored at most; a new one beyond is
        /// refused (v5 QoS 1/2: 0x97; 3.1.1 and QoS 0: delivered to current
        /// subscribers, not stored). Replacing or clearing one always
        /// works. Also bounds the retained messages a new subscription may
        /// have waiting (outside the session queue's bounds, so that none
        /// is lost).
        max_retained_messages: usize = 1_000_000,
        /// Payload and topic bytes of retained messages stored at most;
        /// beyond, refused like `max_retained_messages`.
        max_retained_bytes: usize = 512 * 1024 * 1024,
        /// Resident size above which new connections are refused (0x89
        /// "server busy"; 3.1.1: 3) and publishers pause between reads,
        /// until it is back below 90 % of it. 0: 80 % of the cgroup's
        /// memory limit, or of the machine's memory without one.
        memory_high_watermark_bytes: u64 = 0,
    }
}

settings! {
    /// What each session is granted and holds.
    pub struct Sessions in "sessions" {
        /// Receive Maximum in both directions: unacknowledged QoS 1/2
        /// messages in flight to a client (capped further by the client's
        /// own Receive Maximum) and from it.
        max_inflight: u16 = 32,
        /// Messages a session may have queued beyond its inflight window,
        /// online (slow consumer) or offline (persistent session).
        max_queued_messages: usize = 1000,
        /// Payload and topic bytes a session may have queued: with the
        /// message bound, what one slow or absent subscriber can make the
        /// broker hold. At least `max_packet_size`, at most 4 GiB.
        max_queued_bytes: usize = 64 * 1024 * 1024,
        /// Queue QoS 0 messages for offline persistent sessions too.
        queue_qos0: bool = true,
        /// Which message a full queue drops: `oldest` (keep fresh data) or
        /// `newest` (keep what was queued first). Drops are counted.
        queue_drop_policy: DropPolicy = DropPolicy::Oldest,
        /// Largest keep-alive granted, in seconds. v5 clients asking for
        /// more (or for none, when this is below 65535) get Server Keep
        /// Alive = this value.
        max_keep_alive: u16 = 65_535,
        /// Longest session expiry granted, in seconds. Also how long a
        /// 3.1.1 persistent (clean session = false) session outlives its
        /// connection. 4294967295 means "never expires".
        max_session_expiry: u32 = 7200,
        /// Incoming QoS 2 messages awaiting PUBREL per session.
        max_awaiting_rel: usize = 100,
        /// Topic Alias Maximum announced to v5 clients (0 disables client
        /// aliases).
        topic_alias_maximum: u16 = 1024,
        /// Milliseconds with nothing to read, write or deliver after which
        /// a connection parks: it gives up its task and waits in a shared
        /// poller until something concerns it (PINGREQ is answered without
        /// waking it). 0: never.
        park_idle_after_ms: u64 = 2000,
        /// Let clients publish, retain and leave wills on `$` topics other
        /// than `$SYS` (which stays the broker's own: PUBACK 0x87 for v5).
        client_dollar_topics: bool = false,
    }
}

settings! {
    /// Cluster mode (on when `etcd.endpoints` is set): this node, its peers
    /// and how messages go between them.
    pub struct Cluster in "cluster" {
        /// This node's id (no `/`); also its name in etcd keys. Empty: the
        /// host name (a StatefulSet pod's name, stable across restarts).
        node_id: String = String::new(),
        /// Cluster name: nodes of one cluster share `/starling/<name>/` in
        /// etcd.
        name: String = "starling".to_string() => flag("cluster"),
        /// Where the inter-node gRPC service listens.
        peer_listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 7946)),
        /// The address other nodes use to reach `peer_listen` (default:
        /// `peer_listen` itself), e.g. `starling-0.starling-peers:7946`.
        #[schemars(example = &"starling-0.starling-peers:7946")]
        peer_advertise: Option<String> = None,
        /// Shared secret peers present to each other on every call
        /// (recommended, with or without peer TLS).
        #[schemars(example = &"change-me")]
        peer_token: Option<String> = None => secret,
        /// TTL of this node's etcd lease, in seconds (at least 2): a node
        /// that dies disappears from the cluster, with its routes, within
        /// this time.
        lease_ttl_secs: u64 = 5,
        /// Seconds the other nodes keep the routes of a node whose lease
        /// ran out while it was serving (frozen, cut off, killed):
        /// publishes for its subscribers fail (0x80) rather than being
        /// acknowledged as if nobody wanted them. A node that drains
        /// before it leaves is not kept.
        peer_lapse_grace_secs: u64 = 60,
        /// A QoS 1/2 publisher's PUBACK/PUBREC waits until every other node
        /// the message goes to has acknowledged it ("acknowledged" means
        /// "in the cluster"). `false` acks as soon as the message is queued
        /// for the peers.
        forward_ack: bool = true,
        /// A SUBACK waits until every other node's route index holds the
        /// new subscription's route, so that a message published anywhere
        /// right after the SUBACK arrives; likewise the PUBACK of a
        /// retained QoS 1/2 message waits until every node serves it. Costs
        /// the etcd write plus one round trip to each node (batched).
        route_sync: bool = false,
        /// Longest a SUBACK (or retained PUBACK) waits for route sync, in
        /// seconds; it is sent after that anyway.
        route_sync_timeout_secs: u64 = 5,
        /// Wildcard filters this node advertises in place of the filters
        /// they cover: with `devices/+/cmd/#`, any number of per-device
        /// subscriptions (`devices/<id>/cmd/#`) is one route key in etcd
        /// and one entry in the other nodes' route indexes. Delivery stays
        /// exact. Not for `$share` filters.
        route_aggregates: Vec<String> = Vec::new() => alias("route-aggregate"),
        /// Where the node of each client's session is kept: `home` (each
        /// client id's home node knows it, in memory; nothing is written to
        /// etcd per client) or `etcd` (one key `clients/<id>` per session,
        /// at most ~20-30M sessions per cluster). The same on every node.
        client_directory: ClientDirectoryKind = ClientDirectoryKind::Home,
    }
}

settings! {
    /// The etcd the cluster keeps its state in.
    pub struct Etcd in "etcd" flags "etcd-" {
        /// etcd endpoints (`http://host:2379`, or `https://` with TLS);
        /// setting them turns cluster mode on.
        endpoints: Vec<String> = Vec::new() => flag("etcd"),
        /// etcd user name (with `password`).
        #[schemars(example = &"starling")]
        username: Option<String> = None,
        /// etcd password.
        #[schemars(example = &"secret")]
        password: Option<String> = None => secret,
        /// PEM CA bundle that signs etcd's server certificate (turns TLS to
        /// etcd on).
        #[schemars(example = &"/etc/starling/etcd/ca.crt")]
        ca_file: Option<PathBuf> = None,
        /// PEM client certificate, when etcd requires client certificates
        /// (with `key_file`).
        #[schemars(example = &"/etc/starling/etcd/tls.crt")]
        cert_file: Option<PathBuf> = None,
        /// PEM private key of `cert_file`.
        #[schemars(example = &"/etc/starling/etcd/tls.key")]
        key_file: Option<PathBuf> = None,
    }
}

settings! {
    /// Mutual TLS on the peer port. The three files go together: each node
    /// presents its certificate to the nodes it calls and to those that
    /// call it, and accepts only certificates the CA signed (give peers a
    /// CA of their own).
    pub struct PeerTls in "peer_tls" flags "peer-tls-" {
        /// PEM certificate (chain) this node presents, both ways.
        #[schemars(example = &"/etc/starling/peer-tls/tls.crt")]
        cert_file: Option<PathBuf> = None,
        /// PEM private key of `cert_file`.
        #[schemars(example = &"/etc/starling/peer-tls/tls.key")]
        key_file: Option<PathBuf> = None,
        /// PEM CA every peer's certificate must chain to.
        #[schemars(example = &"/etc/starling/peer-tls/ca.crt")]
        ca_file: Option<PathBuf> = None,
        /// Name every called node's certificate must carry (default: the
        /// host of its `peer_advertise` address).
        #[schemars(example = &"starling-peers.mqtt.svc")]
        server_name: Option<String> = None,
        /// Seconds between reads of the three files: a renewed certificate
        /// (cert-manager) serves new connections without a restart.
        reload_secs: u64 = 30,
    }
}

settings! {
    /// How a node leaves: scale-down, rolling upgrades, SIGTERM.
    pub struct Drain in "drain" flags "drain-" {
        /// Clients disconnected per second while draining.
        rate: u32 = 500,
        /// Seconds a drain waits for disconnected clients to reconnect
        /// elsewhere (their sessions follow them) before handing the
        /// remaining persistent sessions to other nodes.
        session_wait_secs: u64 = 5,
        /// Server Reference sent to MQTT 5 clients told to use another
        /// server (drain), e.g. the cluster's Service address.
        #[schemars(example = &"mqtt.example.com:1883")]
        server_reference: Option<String> = None => flag("server-reference"),
        /// Seconds a graceful shutdown (SIGTERM/SIGINT) waits for
        /// connections to close.
        shutdown_timeout_secs: u64 = 10 => flag("shutdown-timeout-secs"),
    }
}

settings! {
    /// Who may connect (docs/security.md).
    pub struct Auth in "auth" {
        /// Let clients without a user name connect. Unset: allowed only
        /// when no password file is configured (the broker then warns at
        /// start that anyone may connect).
        #[schemars(example = false)]
        allow_anonymous: Option<bool> = None,
        /// A password file: `user:hash` lines as Mosquitto's
        /// `mosquitto_passwd` writes them (`$7$` PBKDF2-SHA512, `$6$`
        /// SHA-512, `$argon2id$`) or bcrypt. `starling passwd FILE USER`
        /// adds or changes a user. Read again on SIGHUP.
        #[schemars(example = &"/etc/starling/passwd")]
        password_file: Option<PathBuf> = None,
        /// Seconds a successful password check is remembered (as a keyed
        /// hash, never the password), so that clients reconnecting are not
        /// hashed again. 0: never.
        cache_ttl_secs: u64 = 600 => flag("auth-cache-ttl-secs"),
        /// Successful password checks remembered at most.
        cache_max_entries: usize = 100_000 => flag("auth-cache-max-entries"),
    }
}

settings! {
    /// The admin HTTP API: `/healthz`, `/readyz`, `/api/v1/node`,
    /// `POST /api/v1/node/drain`, `GET /api/v1/clients/{id}`.
    pub struct Admin in "admin" flags "admin-" {
        /// Where it listens; off when unset.
        #[schemars(example = &"0.0.0.0:8080")]
        listen: Option<SocketAddr> = None,
        /// Bearer token for the calls that change state or reveal client
        /// data (drain, client lookups): without one they are refused. At
        /// least 16 characters.
        #[schemars(example = &"at-least-16-characters")]
        token: Option<String> = None => secret,
        /// A file holding that token (a mounted Secret); wins over `token`.
        #[schemars(example = &"/etc/starling/admin/token")]
        token_file: Option<PathBuf> = None,
    }
}

settings! {
    /// What the broker logs.
    pub struct Log in "log" flags "log-" {
        /// Log filter: error, warn, info, debug, trace, or a tracing
        /// directive such as `info,starling::connection=debug`. `RUST_LOG`
        /// overrides it.
        level: String = "info".to_string(),
    }
}

impl Auth {
    /// Whether clients without a user name are admitted: as set, or, when
    /// unset, only if no password file is configured.
    pub fn allow_anonymous_in_effect(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}
