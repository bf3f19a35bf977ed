//! The command line, made from the settings' declarations: one flag per
//! setting (`--max-inflight`), each also read from its `STARLING_…`
//! environment variable, with the setting's documentation as its help.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::settings::Setting;
use super::{Config, ConfigError, all_settings};

/// The `starling` command: `--config FILE` and a flag per setting.
pub fn command() -> Command {
    let help = super::reference::descriptions();
    let mut command = Command::new("starling")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Starling MQTT broker")
        .arg(
            Arg::new("config")
                .long("config")
                .env("STARLING_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file (see docs/configuration.md)"),
        );
    for setting in all_settings() {
        let text = help.get(&setting.path()).cloned().unwrap_or_default();
        let mut arg = Arg::new(setting.path())
            .long(setting.flag.clone())
            .env(setting.env())
            .value_name(setting.value_name)
            .help(first_sentence(&text))
            .long_help(format!("{text} [TOML: {}]", setting.path()))
            .hide_env_values(setting.secret);
        arg = if setting.many {
            arg.action(ArgAction::Append).value_delimiter(',')
        } else {
            arg.action(ArgAction::Set)
        };
        if let Some(alias) = setting.alias {
            arg = arg.visible_alias(alias);
        }
        command = command.arg(arg);
    }
    command
}

/// The configuration `args` ask for: the file (if any) over the defaults,
/// flags and variables over the file, validated. Clap's own errors (an
/// unknown flag, `--help`) come back as `Err(Left)`.
pub fn parse<I, T>(args: I) -> Result<Config, Parsed>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args).map_err(Parsed::Clap)?;
    from_matches(&matches).map_err(Parsed::Config)
}

/// Why [`parse`] gave no configuration.
#[derive(Debug, thiserror::Error)]
pub enum Parsed {
    /// Not a command line clap accepts, or `--help`/`--version`: clap
    /// prints it and chooses the exit code.
    #[error(transparent)]
    Clap(clap::Error),
    #[error(transparent)]
    Config(ConfigError),
}

/// The configuration of already parsed command-line `matches`.
pub fn from_matches(matches: &ArgMatches) -> Result<Config, ConfigError> {
    let file = match matches.get_one::<PathBuf>("config") {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    file.apply_and_validate(&|setting: &Setting| given(matches, setting))
}

/// The texts a flag or environment variable gave `setting`; `None` when
/// neither did (the file's value or the default stands).
fn given(matches: &ArgMatches, setting: &Setting) -> Option<Vec<String>> {
    let id = setting.path();
    match matches.value_source(&id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => {}
        _ => return None,
    }
    let texts = matches
        .get_raw(&id)?
        .map(|text| text.to_string_lossy().into_owned())
        .collect();
    Some(texts)
}

/// The first sentence of a setting's documentation, for `--help`.
fn first_sentence(text: &str) -> String {
    match text.find(". ") {
        Some(end) => text[..=end].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Config {
        match parse(std::iter::once("starling").chain(args.iter().copied())) {
            Ok(config) => config,
            Err(error) => panic!("{args:?}: {error}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        match parse(std::iter::once("starling").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_command_line_is_valid_for_clap() {
        command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_distinct_flag_and_variable() {
        let settings = all_settings();
        let mut flags: Vec<_> = settings.iter().map(|s| s.flag.clone()).collect();
        flags.extend(settings.iter().filter_map(|s| s.alias.map(str::to_string)));
        let count = flags.len();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), count, "two settings share a flag");
    }

    #[test]
    fn flags_keep_the_names_they_always_had() {
        let config = parse_ok(&[
            "--max-inflight",
            "20",
            "--etcd",
            "http://a:2379,http://b:2379",
            "--cluster",
            "c1",
            "--route-aggregate",
            "devices/+/cmd/#",
            "--drain-rate",
            "9",
            "--server-reference",
            "mqtt:1883",
            "--admin-listen",
            "127.0.0.1:8080",
            "--peer-tls-reload-secs",
            "7",
            "--log-level",
            "debug",
        ]);
        assert_eq!(config.sessions.max_inflight, 20);
        assert_eq!(config.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(config.cluster.name, "c1");
        assert_eq!(config.cluster.route_aggregates, ["devices/+/cmd/#"]);
        assert_eq!(config.drain.rate, 9);
        assert_eq!(config.drain.server_reference.as_deref(), Some("mqtt:1883"));
        assert_eq!(config.admin.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(config.peer_tls.reload_secs, 7);
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn variables_are_starling_and_the_flag() {
        let etcd = all_settings()
            .into_iter()
            .find(|s| s.path() == "etcd.endpoints")
            .unwrap();
        assert_eq!(etcd.env(), "STARLING_ETCD");
        let aggregates = all_settings()
            .into_iter()
            .find(|s| s.path() == "cluster.route_aggregates")
            .unwrap();
        assert_eq!(aggregates.env(), "STARLING_ROUTE_AGGREGATES");
    }

    #[test]
    fn a_bad_flag_value_names_the_key() {
        let error = parse_err(&["--max-packet-size", "huge"]);
        assert!(error.contains("limits.max_packet_size"), "{error}");
        let error = parse_err(&["--queue-drop-policy", "random"]);
        assert!(error.contains("sessions.queue_drop_policy"), "{error}");
    }

    #[test]
    fn an_invalid_value_names_the_key() {
        let error = parse_err(&["--max-inflight", "0"]);
        assert!(error.contains("sessions.max_inflight"), "{error}");
    }

    #[test]
    fn listen_is_repeatable() {
        let config = parse_ok(&["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:2"]);
        assert_eq!(config.listeners.listen.len(), 2);
    }

    #[test]
    fn an_empty_node_id_becomes_the_host_name() {
        let config = parse_ok(&[]);
        assert!(!config.cluster.node_id.is_empty());
    }
}
