//! The broker's configuration: a TOML file of tables, `STARLING_*`
//! environment variables and command-line flags, merged with that
//! precedence (flags > env > file) over the defaults, then validated.
//!
//! Every setting is declared once, in [`tables`] (see [`settings`] for
//! how a declaration becomes a key, a flag, a variable, a default and its
//! documentation); [`cli`] makes the command line from the declarations,
//! and [`mod@reference`] the documentation and the example file.

pub mod cli;
pub mod reference;
pub mod settings;
pub mod tables;

use std::path::{Path, PathBuf};

pub use tables::{
    Admin, Auth, ClientDirectoryKind, Cluster, Drain, DropPolicy, Etcd, Limits, Listeners, Log,
    PeerTls, Sessions,
};

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

/// Declares [`Config`] from its tables, in file order, and what walks
/// them all: [`all_settings`], [`table_names`], and applying flags.
macro_rules! config_tables {
    ($($(#[$meta:meta])* $field:ident: $table:ty),* $(,)?) => {
        /// The configuration the broker runs with: one field per TOML table.
        #[derive(
            Clone,
            Debug,
            Default,
            PartialEq,
            Eq,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $($(#[$meta])* pub $field: $table,)*
        }

        /// Every setting, table by table, in file order.
        pub fn all_settings() -> Vec<settings::Setting> {
            use settings::Table;
            [$(<$table>::settings()),*].concat()
        }

        /// The tables' names, in file order.
        pub fn table_names() -> Vec<&'static str> {
            use settings::Table;
            vec![$(<$table>::TABLE),*]
        }

        impl Config {
            /// Sets, in every table, what `given` holds.
            fn apply_given(
                &mut self,
                given: &dyn Fn(&settings::Setting) -> Option<Vec<String>>,
            ) -> Result<(), ConfigError> {
                let settings = all_settings();
                $(apply_table(&mut self.$field, &settings, given)?;)*
                Ok(())
            }
        }
    };
}

config_tables! {
    listeners: Listeners,
    limits: Limits,
    sessions: Sessions,
    cluster: Cluster,
    etcd: Etcd,
    peer_tls: PeerTls,
    drain: Drain,
    auth: Auth,
    admin: Admin,
    log: Log,
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
    #[error("invalid value for `{key}`{}: {problem}", also_set_by(key))]
    Invalid { key: &'static str, problem: String },
    #[error("invalid value for `{key}` (--{flag} or {env}): {problem}")]
    Flag {
        key: String,
        flag: String,
        env: String,
        problem: String,
    },
}

/// Where a key of the flat layout used before tables went, if `key` at
/// the file's root is one: a setting's old name (`max_inflight`,
/// `etcd_username`), or a name that is now its table's (`etcd`,
/// `cluster`, holding a value rather than a table).
fn flat_key_hint(key: &str, value: &toml::Value) -> Option<String> {
    let setting = all_settings()
        .into_iter()
        .find(|s| s.flag.replace('-', "_") == key || (s.key == key && s.table != key))?;
    if setting.table != key {
        Some(format!(
            "`{key}` belongs in the [{}] table as `{}`",
            setting.table, setting.key
        ))
    } else if !value.is_table() {
        Some(format!(
            "`{key}` is a table now: this setting is `{}` in [{}]",
            setting.key, setting.table
        ))
    } else {
        None
    }
}

/// ` (--flag, STARLING_FLAG)` for the setting at `path` (`table.key`), so
/// that an error names it the way it was given, whichever that was.
fn also_set_by(path: &str) -> String {
    all_settings()
        .into_iter()
        .find(|setting| setting.path() == path)
        .map(|setting| format!(" (--{}, {})", setting.flag, setting.env()))
        .unwrap_or_default()
}

impl Config {
    /// The file at `path` over the defaults, checked for unknown keys and
    /// types (not yet validated: flags may still change it).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// A TOML text over the defaults. A key of the flat layout used
    /// before tables is named with the table it belongs in.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        match toml::from_str::<Config>(text) {
            Ok(config) => Ok(config),
            Err(error) => {
                let moved = toml::from_str::<toml::Table>(text).ok().and_then(|root| {
                    root.iter()
                        .find_map(|(key, value)| flat_key_hint(key, value))
                });
                Err(match moved {
                    Some(hint) => format!("{}\n{hint}", error.to_string().trim_end()),
                    None => error.to_string(),
                })
            }
        }
    }

    /// Sets what `given` (flags and environment variables, by setting)
    /// holds, then validates the whole.
    pub fn apply_and_validate(
        mut self,
        given: &dyn Fn(&settings::Setting) -> Option<Vec<String>>,
    ) -> Result<Config, ConfigError> {
        self.apply_given(given)?;
        if self.cluster.node_id.is_empty() {
            self.cluster.node_id = host_name();
        }
        self.validate()?;
        Ok(self)
    }

    /// The JSON Schema of the configuration file (for the operator's
    /// custom resource, which embeds it).
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(Config)
    }
}

/// Sets the settings of `table` that `given` has values for.
fn apply_table<T: settings::Table>(
    table: &mut T,
    settings: &[settings::Setting],
    given: &dyn Fn(&settings::Setting) -> Option<Vec<String>>,
) -> Result<(), ConfigError> {
    let setting = |key: &str| {
        settings
            .iter()
            .find(|s| s.table == T::TABLE && s.key == key)
    };
    table
        .apply(&|key: &str| setting(key).and_then(given))
        .map_err(|(key, problem)| match setting(key) {
            Some(setting) => ConfigError::Flag {
                key: setting.path(),
                flag: setting.flag.clone(),
                env: setting.env(),
                problem,
            },
            None => ConfigError::Flag {
                key: format!("{}.{key}", T::TABLE),
                flag: key.replace('_', "-"),
                env: String::new(),
                problem,
            },
        })
}

/// The host name (a StatefulSet pod's name is its stable node id).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "starling".to_string())
}

impl Config {
    /// The length and level limits every topic obeys.
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_length: self.limits.max_topic_length,
            max_levels: self.limits.max_topic_levels,
        }
    }

    /// Whether a client may publish, retain or leave a will on `topic`:
    /// never on `$SYS/…` (nobody may forge the broker's own reports), on
    /// other `$` topics only with `sessions.client_dollar_topics` (MQTT 5.0 §4.7.2:
    /// they are the server's).
    pub fn client_may_publish(&self, topic: &str) -> bool {
        !topic.starts_with('$') || (self.sessions.client_dollar_topics && !is_sys_topic(topic))
    }

    /// The admin API token: the content of `admin.token_file` (surrounding
    /// white space trimmed) or `admin.token`; `None` when neither is set.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let (key, token) = match (&self.admin.token_file, &self.admin.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Invalid {
                    key: "admin.token_file",
                    problem: format!("cannot read {}: {error}", path.display()),
                })?;
                ("admin.token_file", text.trim().to_string())
            }
            (None, Some(token)) => ("admin.token", token.clone()),
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

    /// How long a connection stays idle before it parks, if it ever does.
    pub fn park_idle_after(&self) -> Option<std::time::Duration> {
        (self.sessions.park_idle_after_ms > 0)
            .then(|| std::time::Duration::from_millis(self.sessions.park_idle_after_ms))
    }
}

impl Config {
    pub fn cluster_mode(&self) -> bool {
        !self.etcd.endpoints.is_empty()
    }

    /// The peer address advertised to other nodes.
    pub fn peer_endpoint(&self) -> String {
        self.cluster
            .peer_advertise
            .clone()
            .unwrap_or_else(|| self.cluster.peer_listen.to_string())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        }
        if self.listeners.listen.is_empty() {
            return invalid("listeners.listen", "at least one address is needed");
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        // A PUBLISH with a one-byte topic needs 5 bytes; anything below 16
        // cannot carry a useful packet and is certainly a mistake.
        if self.limits.max_packet_size < 16 || self.limits.max_packet_size > 268_435_460 {
            return invalid(
                "limits.max_packet_size",
                "must be between 16 and 268435460 bytes",
            );
        }
        if self.sessions.max_inflight == 0 {
            return invalid(
                "sessions.max_inflight",
                "must be at least 1 (MQTT 5 forbids a Receive Maximum of 0)",
            );
        }
        if self.sessions.max_queued_messages == 0 {
            return invalid("sessions.max_queued_messages", "must be at least 1");
        }
        if self.limits.max_sessions == 0 {
            return invalid("limits.max_sessions", "must be at least 1");
        }
        if self.limits.max_retained_messages == 0 {
            return invalid("limits.max_retained_messages", "must be at least 1");
        }
        if self.limits.max_pending_connects == 0 {
            return invalid("limits.max_pending_connects", "must be at least 1");
        }
        if self.limits.incomplete_packet_timeout_secs == 0
            || self.limits.incomplete_packet_timeout_secs > 3600
        {
            return invalid(
                "limits.incomplete_packet_timeout_secs",
                "must be between 1 and 3600",
            );
        }
        // One packet of the largest size must fit, or large packets could
        // never be read at all.
        if self.limits.max_read_buffer_bytes < self.limits.max_packet_size as usize {
            return invalid(
                "limits.max_read_buffer_bytes",
                "must be at least limits.max_packet_size, or the largest packets could never be read",
            );
        }
        if self.sessions.max_queued_bytes > u32::MAX as usize {
            return invalid(
                "sessions.max_queued_bytes",
                "must be at most 4294967295 (4 GiB)",
            );
        }
        if self.sessions.max_queued_bytes < self.limits.max_packet_size as usize {
            return invalid(
                "sessions.max_queued_bytes",
                "must be at least limits.max_packet_size, or the largest messages could never be queued",
            );
        }
        if self.limits.max_topic_length == 0 || self.limits.max_topic_length > 65_535 {
            return invalid("limits.max_topic_length", "must be between 1 and 65535");
        }
        if self.limits.max_topic_levels == 0
            || self.limits.max_topic_levels > MAX_TOPIC_LEVELS_CEILING
        {
            return invalid(
                "limits.max_topic_levels",
                &format!("must be between 1 and {MAX_TOPIC_LEVELS_CEILING}"),
            );
        }
        if self.sessions.max_awaiting_rel == 0 {
            return invalid("sessions.max_awaiting_rel", "must be at least 1");
        }
        if self.limits.connect_timeout_secs == 0 {
            return invalid("limits.connect_timeout_secs", "must be at least 1");
        }
        if self.cluster.node_id.is_empty() || self.cluster.node_id.contains('/') {
            return invalid("cluster.node_id", "must be non-empty and free of '/'");
        }
        if self.cluster.name.is_empty() || self.cluster.name.contains('/') {
            return invalid("cluster.name", "must be non-empty and free of '/'");
        }
        if self.drain.rate == 0 {
            return invalid("drain.rate", "must be at least 1 client per second");
        }
        for pattern in &self.cluster.route_aggregates {
            match starling_codec::topic::parse_filter(pattern) {
                Err(error) => {
                    return invalid(
                        "cluster.route_aggregates",
                        &format!("{pattern:?} is not a topic filter: {error}"),
                    );
                }
                Ok(parsed) if parsed.share_group.is_some() => {
                    return invalid(
                        "cluster.route_aggregates",
                        &format!("{pattern:?}: shared subscriptions are not aggregated"),
                    );
                }
                Ok(_) if !pattern.split('/').any(|level| level == "+" || level == "#") => {
                    return invalid(
                        "cluster.route_aggregates",
                        &format!("{pattern:?} has no wildcard: it would cover only itself"),
                    );
                }
                Ok(_) => {}
            }
        }
        if self.cluster.route_sync_timeout_secs == 0 {
            return invalid("cluster.route_sync_timeout_secs", "must be at least 1");
        }
        if self.cluster.lease_ttl_secs < 2 {
            return invalid("cluster.lease_ttl_secs", "must be at least 2");
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return invalid(
                "etcd.cert_file",
                "etcd.cert_file and etcd.key_file go together",
            );
        }
        if self.etcd.cert_file.is_some() && self.etcd.ca_file.is_none() {
            return invalid(
                "etcd.ca_file",
                "a client certificate needs TLS: set etcd.ca_file too",
            );
        }
        let peer_tls = [
            ("peer_tls.cert_file", self.peer_tls.cert_file.is_some()),
            ("peer_tls.key_file", self.peer_tls.key_file.is_some()),
            ("peer_tls.ca_file", self.peer_tls.ca_file.is_some()),
        ];
        if let Some((missing, _)) = peer_tls.iter().find(|(_, set)| !set)
            && peer_tls.iter().any(|(_, set)| *set)
        {
            return invalid(
                missing,
                "peer TLS needs peer_tls.cert_file, key_file and ca_file together",
            );
        }
        if self.peer_tls.reload_secs == 0 {
            return invalid("peer_tls.reload_secs", "must be at least 1");
        }
        if self.peer_tls.server_name.is_some() && self.peer_tls.ca_file.is_none() {
            return invalid(
                "peer_tls.server_name",
                "only means something with peer TLS: set peer_tls.cert_file, key_file and ca_file",
            );
        }
        if self.etcd.password.is_some() && self.etcd.username.is_none() {
            return invalid("etcd.password", "needs etcd.username too");
        }
        self.admin_token()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "not a level or tracing filter directive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_flags(_: &settings::Setting) -> Option<Vec<String>> {
        None
    }

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text)?
            .apply_and_validate(&no_flags)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn a_file_sets_keys_in_their_tables() {
        let config =
            load("[sessions]\nmax_inflight = 10\n\n[etcd]\nendpoints = [\"http://e:2379\"]\n")
                .unwrap();
        assert_eq!(config.sessions.max_inflight, 10);
        assert_eq!(config.etcd.endpoints, ["http://e:2379"]);
        assert!(config.cluster_mode());
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn flags_beat_the_file() {
        let file =
            Config::from_toml("[sessions]\nmax_inflight = 10\nmax_queued_messages = 5\n").unwrap();
        let config = file
            .apply_and_validate(&|setting| {
                (setting.path() == "sessions.max_inflight").then(|| vec!["20".to_string()])
            })
            .unwrap();
        assert_eq!(config.sessions.max_inflight, 20);
        assert_eq!(config.sessions.max_queued_messages, 5);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = load("[sessions]\nmax_inflihgt = 3\n").unwrap_err();
        assert!(error.contains("max_inflihgt"), "{error}");
    }

    #[test]
    fn a_key_of_the_flat_layout_is_sent_to_its_table() {
        let error = load("max_inflight = 3\n").unwrap_err();
        assert!(
            error.contains("`max_inflight` belongs in the [sessions] table"),
            "{error}"
        );
        let error = load("etcd_username = \"u\"\n").unwrap_err();
        assert!(
            error.contains("belongs in the [etcd] table as `username`"),
            "{error}"
        );
        let error = load("etcd = [\"http://e:2379\"]\n").unwrap_err();
        assert!(
            error.contains("`etcd` is a table now: this setting is `endpoints` in [etcd]"),
            "{error}"
        );
        let error = load("cluster = \"c1\"\n").unwrap_err();
        assert!(error.contains("`name` in [cluster]"), "{error}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let error = load("[sessions]\nmax_inflight = \"many\"\n").unwrap_err();
        assert!(error.contains("max_inflight"), "{error}");
    }

    #[test]
    fn route_aggregates_must_be_wildcard_filters() {
        for (pattern, problem) in [
            ("devices/#/cmd", "not a topic filter"),
            ("devices/1/cmd", "no wildcard"),
            ("$share/g/devices/+", "shared subscriptions"),
        ] {
            let error =
                load(&format!("[cluster]\nroute_aggregates = [{pattern:?}]\n")).unwrap_err();
            assert!(
                error.contains("cluster.route_aggregates") && error.contains(problem),
                "{error}"
            );
        }
        let config =
            load("[cluster]\nroute_aggregates = [\"devices/+/cmd/#\", \"a/#\"]\n").unwrap();
        assert_eq!(config.cluster.route_aggregates, ["devices/+/cmd/#", "a/#"]);
    }

    #[test]
    fn peer_tls_files_come_together() {
        let error =
            load("[peer_tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n").unwrap_err();
        assert!(error.contains("peer_tls.ca_file"), "{error}");
        let error = load("[peer_tls]\nserver_name = \"peers\"\n").unwrap_err();
        assert!(error.contains("peer_tls.server_name"), "{error}");
    }

    #[test]
    fn an_invalid_value_is_named() {
        let error = load("[sessions]\nmax_inflight = 0\n").unwrap_err();
        assert!(error.contains("sessions.max_inflight"), "{error}");
    }

    #[test]
    fn the_schema_names_every_table() {
        let schema = Config::json_schema();
        let text = schema.as_value().to_string();
        for table in [
            "listeners",
            "limits",
            "sessions",
            "cluster",
            "etcd",
            "peer_tls",
        ] {
            assert!(text.contains(table), "{table}");
        }
    }
}
