//! Command-line interface: the `conn`, `sub` and `pub` subcommands and their
//! options, named after emqtt-bench's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Load and benchmark tool for MQTT brokers.
#[derive(Debug, Parser)]
#[command(name = "starling-bench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open connections and keep them idle (measures connect time).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Conn(ConnArgs),
    /// Subscribe and count, time and check what arrives.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sub(SubArgs),
    /// Publish at a rate or as fast as possible.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Pub(PubArgs),
}

/// The role a client plays; also part of its client identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Conn,
    Sub,
    Pub,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Conn => "conn",
            Mode::Sub => "sub",
            Mode::Pub => "pub",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// Options every subcommand takes: where to connect, how many clients, how.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Broker host name or address.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port; several, comma separated, spread the clients over them
    /// round-robin by index (the nodes of a cluster on one host).
    #[arg(short = 'p', long, value_delimiter = ',', default_value = "1883")]
    pub port: Vec<u16>,
    /// Number of clients.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub count: u32,
    /// Index of the first client (`%i` in templates and client ids).
    #[arg(short = 'n', long = "startnumber", default_value_t = 0)]
    pub start_number: u32,
    /// Connections started per second; 0 = as fast as possible.
    #[arg(short = 'R', long, default_value_t = 0)]
    pub connrate: u32,
    /// Most connection handshakes (TCP, TLS, WebSocket, CONNACK) under way
    /// at once; 0 = no limit.
    #[arg(long, default_value_t = 1000)]
    pub max_pending: u32,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "version", default_value_t = 5, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub version: u8,
    /// Client identifier prefix: ids are PREFIX_MODE_INDEX.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Keep-alive in seconds (0 = off).
    #[arg(short = 'k', long, default_value_t = 300)]
    pub keepalive: u16,
    /// Clean Session (3.1.1) / Clean Start (5).
    #[arg(short = 'C', long, default_value_t = true, action = ArgAction::Set)]
    pub clean: bool,
    /// Session Expiry Interval in seconds (MQTT 5).
    #[arg(short = 'x', long, default_value_t = 0)]
    pub session_expiry: u32,
    /// User name (a template: %i = client index, %c = client id).
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (a template, like the user name).
    #[arg(short = 'P', long)]
    pub password: Option<String>,
    /// Transport: plain TCP, TLS, WebSocket or WebSocket over TLS.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Do not verify the server certificate (TLS and WSS).
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of CA certificates to verify the server with (TLS and WSS);
    /// without it the system bundle is used.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// TLS server name to verify; defaults to --host.
    #[arg(long)]
    pub servername: Option<String>,
    /// WebSocket path.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// Local source addresses, comma separated, used round-robin (each
    /// address has its own range of ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    pub ifaddr: Vec<IpAddr>,
    /// Stop after this many seconds. Default: 60 when no other bound
    /// (--limit, --expect, --hold) is given, else 300 as a safety net.
    #[arg(short = 'd', long)]
    pub duration: Option<f64>,
    /// Seconds to wait for CONNACK (and SUBACK).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Write the JSON summary to this file ("-" = stdout, the default).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Create this file once every client has connected (and subscribed),
    /// so that a script can start the next step.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Runtime threads: 0 = one per core; 1 = everything on one thread,
    /// which keeps the tool's own wake-ups out of latency figures when it
    /// drives few clients.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Clone, Debug, Args)]
pub struct ConnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds to stay connected once every client is connected, then
    /// disconnect and exit (0 = at once). Default: until --duration.
    #[arg(long)]
    pub hold: Option<f64>,
}

#[derive(Clone, Debug, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Topic filter template (%i = client index, %c = client id); repeatable.
    #[arg(short = 't', long, required = true)]
    pub topic: Vec<String>,
    /// Subscription QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Subscribe as a member of this shared subscription group
    /// ($share/GROUP/TOPIC).
    #[arg(long)]
    pub shared_group: Option<String>,
    /// Exit once this many messages arrived (all clients together);
    /// fewer by the end counts as lost.
    #[arg(long)]
    pub expect: Option<u64>,
    /// Exit when no message arrived for this many seconds after the first.
    #[arg(long)]
    pub idle_timeout: Option<f64>,
}

#[derive(Clone, Debug, Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Topic template (%i = client index, %c = client id).
    #[arg(short = 't', long)]
    pub topic: String,
    /// Publish QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes; the first 8 carry the send time, for latency.
    #[arg(short = 's', long, default_value_t = 256)]
    pub size: usize,
    /// Milliseconds between two messages of one client (0 = as fast as
    /// possible).
    #[arg(short = 'i', long, default_value_t = 1000.0, conflicts_with = "rate")]
    pub interval: f64,
    /// Total messages per second over all clients (instead of --interval).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages per client, then disconnect (0 = no limit).
    #[arg(short = 'L', long, default_value_t = 0)]
    pub limit: u64,
    /// Most QoS 1/2 messages in flight per client, always capped by the
    /// server's Receive Maximum (MQTT 5). Default: the Receive Maximum for
    /// MQTT 5, 32 for 3.1.1 (which has no way to learn the server's limit).
    #[arg(short = 'F', long, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: Option<u16>,
    /// Set the retain flag.
    #[arg(short = 'r', long)]
    pub retain: bool,
    /// Pace on tokio's 1 ms timer ticks instead of a microsecond timer
    /// (one timerfd per paced client): clients whose phases fall in the
    /// same millisecond then send together, in bursts.
    #[arg(long)]
    pub coarse_timer: bool,
}

impl CommonArgs {
    /// The run's time bound: --duration, or a default that depends on
    /// whether another bound was given.
    pub fn duration(&self, other_bound: bool) -> Duration {
        match self.duration {
            Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
            None if other_bound => Duration::from_secs(300),
            None => Duration::from_secs(60),
        }
    }
}

impl PubArgs {
    /// The time between two messages of one client; `None` = flood.
    pub fn period(&self) -> Option<Duration> {
        match self.rate {
            Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(
                f64::from(self.common.count.max(1)) / rate,
            )),
            Some(_) => None,
            None if self.interval > 0.0 => Some(Duration::from_secs_f64(self.interval / 1000.0)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn short_options_follow_emqtt_bench() {
        let cli = parse(&[
            "starling-bench",
            "pub",
            "-h",
            "127.0.0.2",
            "-p",
            "1884",
            "-c",
            "10",
            "-V",
            "4",
            "-q",
            "1",
            "-s",
            "64",
            "-t",
            "t/%i",
            "-L",
            "5",
            "--rate",
            "100",
        ]);
        let Command::Pub(args) = cli.command else {
            panic!("not pub");
        };
        assert_eq!(args.common.host, "127.0.0.2");
        assert_eq!(args.common.port, vec![1884]);
        assert_eq!(args.common.count, 10);
        assert_eq!(args.common.version, 4);
        assert_eq!(args.qos, 1);
        assert_eq!(args.size, 64);
        assert_eq!(args.limit, 5);
        assert_eq!(args.period(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn several_ports_spread_the_clients() {
        let cli = Cli::parse_from(["starling-bench", "conn", "-p", "1883,1884,1885", "-c", "9"]);
        let Command::Conn(args) = cli.command else {
            panic!("not conn");
        };
        assert_eq!(args.common.port, vec![1883, 1884, 1885]);
    }

    #[test]
    fn interval_and_rate_exclude_each_other() {
        let result =
            Cli::try_parse_from(["starling-bench", "pub", "-t", "x", "-i", "5", "--rate", "9"]);
        assert!(result.is_err());
    }

    #[test]
    fn ifaddr_takes_a_list() {
        let cli = parse(&["starling-bench", "conn", "--ifaddr", "127.0.0.1,127.0.0.2"]);
        let Command::Conn(args) = cli.command else {
            panic!("not conn");
        };
        assert_eq!(args.common.ifaddr.len(), 2);
    }

    #[test]
    fn default_duration_depends_on_other_bounds() {
        let cli = parse(&["starling-bench", "conn"]);
        let Command::Conn(args) = cli.command else {
            panic!("not conn");
        };
        assert_eq!(args.common.duration(false), Duration::from_secs(60));
        assert_eq!(args.common.duration(true), Duration::from_secs(300));
    }

    #[test]
    fn flood_when_interval_is_zero() {
        let cli = parse(&["starling-bench", "pub", "-t", "x", "-i", "0"]);
        let Command::Pub(args) = cli.command else {
            panic!("not pub");
        };
        assert_eq!(args.period(), None);
    }
}
