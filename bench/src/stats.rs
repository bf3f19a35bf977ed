//! Counters shared by all clients, the latency histograms, and the summary
//! they add up to.
//!
//! Clients count into a [`Local`] and fold it into the shared [`Stats`]
//! once per batch of packets, so the shared atomics are touched once per
//! read or write rather than once per message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Latencies are recorded in nanoseconds, up to an hour, 3 significant
/// digits.
const HIST_MAX_NS: u64 = 3_600 * 1_000_000_000;
/// Latencies a client keeps before taking the histogram's lock.
const LATENCY_BATCH: usize = 512;
/// Error messages kept for the summary.
const MAX_ERROR_SAMPLES: usize = 8;
const UNSET: u64 = u64::MAX;

/// What went wrong, for the error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP, TLS or WebSocket connection could not be set up.
    Connect,
    /// CONNACK with a failure code.
    Refused,
    /// SUBACK with a failure code.
    Subscribe,
    /// No CONNACK or SUBACK in time.
    Timeout,
    /// The server sent something that is not valid MQTT or not expected.
    Protocol,
    /// Read or write failed after the connection was up.
    Io,
    /// The server closed the connection or sent DISCONNECT.
    Closed,
    /// PUBACK/PUBREC with a failure reason code.
    Nacked,
}

impl ErrorKind {
    const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Refused,
        ErrorKind::Subscribe,
        ErrorKind::Timeout,
        ErrorKind::Protocol,
        ErrorKind::Io,
        ErrorKind::Closed,
        ErrorKind::Nacked,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters shared by every client of the run.
pub struct Stats {
    start: Instant,
    pub attempted: AtomicU64,
    /// Connections currently up.
    pub connected: AtomicU64,
    /// Connections that got a successful CONNACK (and SUBACK for `sub`).
    pub ready: AtomicU64,
    /// Clients whose connection phase is over, successfully or not.
    pub settled: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    first_send: AtomicU64,
    last_send: AtomicU64,
    last_ack: AtomicU64,
    first_recv: AtomicU64,
    last_recv: AtomicU64,
    first_connect: AtomicU64,
    last_connect: AtomicU64,
    error_samples: Mutex<Vec<String>>,
    latency: Mutex<Histogram<u64>>,
    connect_time: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_NS, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(_) => unreachable!("valid histogram bounds"),
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            start: Instant::now(),
            attempted: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: Default::default(),
            first_send: AtomicU64::new(UNSET),
            last_send: AtomicU64::new(0),
            last_ack: AtomicU64::new(0),
            first_recv: AtomicU64::new(UNSET),
            last_recv: AtomicU64::new(0),
            first_connect: AtomicU64::new(UNSET),
            last_connect: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
            latency: Mutex::new(histogram()),
            connect_time: Mutex::new(histogram()),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn error(&self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
        let mut samples = self.error_samples.lock();
        if samples.len() < MAX_ERROR_SAMPLES {
            samples.push(message());
        }
    }

    /// A connection attempt starts (at `started`, from [`Stats::now`]).
    pub fn connect_started(&self, started: u64) {
        self.attempted.fetch_add(1, Relaxed);
        self.first_connect.fetch_min(started, Relaxed);
    }

    /// A connection is up and (for subscribers) subscribed; it took
    /// `took_ns` from its start.
    pub fn connect_done(&self, took_ns: u64) {
        let now = self.now();
        self.ready.fetch_add(1, Relaxed);
        self.last_connect.fetch_max(now, Relaxed);
        self.connect_time.lock().saturating_record(took_ns.max(1));
    }

    /// Total messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Time since the last message arrived, once one has.
    pub fn since_last_recv(&self) -> Option<Duration> {
        if self.first_recv.load(Relaxed) == UNSET {
            return None;
        }
        let last = self.last_recv.load(Relaxed);
        Some(Duration::from_nanos(self.now().saturating_sub(last)))
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut errors = ErrorCounts::default();
        for kind in ErrorKind::ALL {
            let n = load(&self.errors[kind.index()]);
            match kind {
                ErrorKind::Connect => errors.connect = n,
                ErrorKind::Refused => errors.refused = n,
                ErrorKind::Subscribe => errors.subscribe = n,
                ErrorKind::Timeout => errors.timeout = n,
                ErrorKind::Protocol => errors.protocol = n,
                ErrorKind::Io => errors.io = n,
                ErrorKind::Closed => errors.closed = n,
                ErrorKind::Nacked => errors.nacked = n,
            }
        }
        errors.total = errors.connect
            + errors.refused
            + errors.subscribe
            + errors.timeout
            + errors.protocol
            + errors.io
            + errors.closed
            + errors.nacked;
        let window = |first: &AtomicU64, last: &AtomicU64| {
            let (first, last) = (load(first), load(last));
            (first != UNSET && last >= first).then(|| last - first)
        };
        Snapshot {
            elapsed_ns: self.now(),
            attempted: load(&self.attempted),
            connected: load(&self.connected),
            ready: load(&self.ready),
            sent: load(&self.sent),
            acked: load(&self.acked),
            received: load(&self.received),
            send_window_ns: window(&self.first_send, &self.last_send),
            ack_window_ns: window(&self.first_send, &self.last_ack),
            recv_window_ns: window(&self.first_recv, &self.last_recv),
            connect_window_ns: window(&self.first_connect, &self.last_connect),
            errors,
            error_samples: self.error_samples.lock().clone(),
            latency: LatencySummary::from_histogram(&self.latency.lock()),
            connect_latency: LatencySummary::from_histogram(&self.connect_time.lock()),
        }
    }
}

/// One client's counts since its last flush.
#[derive(Default)]
pub struct Local {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    latencies: Vec<u64>,
}

impl Local {
    pub fn record_latency(&mut self, ns: u64, stats: &Stats) {
        if self.latencies.capacity() == 0 {
            self.latencies.reserve_exact(LATENCY_BATCH);
        }
        self.latencies.push(ns.max(1));
        if self.latencies.len() >= LATENCY_BATCH {
            self.flush_latencies(stats);
        }
    }

    fn flush_latencies(&mut self, stats: &Stats) {
        if self.latencies.is_empty() {
            return;
        }
        let mut hist = stats.latency.lock();
        for &ns in &self.latencies {
            hist.saturating_record(ns);
        }
        drop(hist);
        self.latencies.clear();
    }

    /// Adds the counts to `stats`; returns the run's total received.
    pub fn flush(&mut self, stats: &Stats) -> u64 {
        let mut total_received = 0;
        if self.sent + self.acked + self.received == 0 {
            return stats.received();
        }
        let now = stats.now();
        if self.sent > 0 {
            stats.sent.fetch_add(self.sent, Relaxed);
            stats.first_send.fetch_min(now, Relaxed);
            stats.last_send.fetch_max(now, Relaxed);
            self.sent = 0;
        }
        if self.acked > 0 {
            stats.acked.fetch_add(self.acked, Relaxed);
            stats.last_ack.fetch_max(now, Relaxed);
            self.acked = 0;
        }
        if self.received > 0 {
            total_received = stats.received.fetch_add(self.received, Relaxed) + self.received;
            stats.first_recv.fetch_min(now, Relaxed);
            stats.last_recv.fetch_max(now, Relaxed);
            self.received = 0;
        }
        total_received
    }

    /// Flushes everything, latencies included (at the end of a client).
    pub fn finish(&mut self, stats: &Stats) {
        self.flush(stats);
        self.flush_latencies(stats);
    }
}

/// The counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub elapsed_ns: u64,
    pub attempted: u64,
    pub connected: u64,
    pub ready: u64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub send_window_ns: Option<u64>,
    pub ack_window_ns: Option<u64>,
    pub recv_window_ns: Option<u64>,
    pub connect_window_ns: Option<u64>,
    pub errors: ErrorCounts,
    pub error_samples: Vec<String>,
    pub latency: LatencySummary,
    pub connect_latency: LatencySummary,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub connect: u64,
    pub refused: u64,
    pub subscribe: u64,
    pub timeout: u64,
    pub protocol: u64,
    pub io: u64,
    pub closed: u64,
    pub nacked: u64,
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    round3(ns as f64 / 1_000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

impl LatencySummary {
    pub fn from_histogram(hist: &Histogram<u64>) -> LatencySummary {
        if hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: hist.len(),
            min: us(hist.min()),
            mean: round3(hist.mean() / 1_000.0),
            p50: us(hist.value_at_quantile(0.50)),
            p90: us(hist.value_at_quantile(0.90)),
            p99: us(hist.value_at_quantile(0.99)),
            p99_9: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        }
    }
}

/// What the run was, for the summary.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub mode: &'static str,
    pub transport: &'static str,
    pub version: u8,
    pub qos: u8,
    pub clients: u64,
    /// Messages the run should have seen: `pub --limit` × clients, or
    /// `sub --expect`.
    pub expected: Option<u64>,
    pub stopped_by: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// From the first connection attempt to the last successful CONNACK
    /// (SUBACK for `sub`).
    pub time_s: f64,
    pub rate: f64,
    pub per_connection_us: LatencySummary,
}

/// The summary printed as JSON at the end of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub transport: &'static str,
    pub version: u8,
    pub qos: u8,
    pub clients: u64,
    pub stopped_by: &'static str,
    pub elapsed_s: f64,
    pub connect: ConnectSummary,
    pub sent: u64,
    pub acked: u64,
    /// Messages per second between the first and the last send.
    pub send_rate: f64,
    /// Acknowledgements per second between the first send and the last ack.
    pub ack_rate: f64,
    pub received: u64,
    /// Messages per second between the first and the last arrival.
    pub recv_rate: f64,
    pub expected: Option<u64>,
    /// `expected` minus what was received (sub) or acknowledged (pub QoS
    /// 1/2) or sent (pub QoS 0); 0 when nothing was expected.
    pub lost: u64,
    pub latency_us: LatencySummary,
    pub errors: ErrorCounts,
    pub error_samples: Vec<String>,
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e6
}

/// `count` events over `window_ns`, falling back to the whole run when the
/// window is empty.
fn rate(count: u64, window_ns: Option<u64>, elapsed_ns: u64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let ns = match window_ns {
        Some(w) if w > 0 && count > 1 => w,
        _ => elapsed_ns.max(1),
    };
    round3(count as f64 * 1e9 / ns as f64)
}

impl Summary {
    pub fn new(info: &RunInfo, snap: &Snapshot) -> Summary {
        let delivered = match info.mode {
            "sub" => snap.received,
            "pub" if info.qos > 0 => snap.acked,
            "pub" => snap.sent,
            _ => 0,
        };
        let lost = info
            .expected
            .map_or(0, |expected| expected.saturating_sub(delivered));
        let connect_ns = snap.connect_window_ns.unwrap_or(0);
        Summary {
            mode: info.mode,
            transport: info.transport,
            version: info.version,
            qos: info.qos,
            clients: info.clients,
            stopped_by: info.stopped_by,
            elapsed_s: secs(snap.elapsed_ns),
            connect: ConnectSummary {
                attempted: snap.attempted,
                ok: snap.ready,
                failed: snap.attempted.saturating_sub(snap.ready),
                time_s: secs(connect_ns),
                rate: rate(snap.ready, snap.connect_window_ns, snap.elapsed_ns),
                per_connection_us: snap.connect_latency.clone(),
            },
            sent: snap.sent,
            acked: snap.acked,
            send_rate: rate(snap.sent, snap.send_window_ns, snap.elapsed_ns),
            ack_rate: rate(snap.acked, snap.ack_window_ns, snap.elapsed_ns),
            received: snap.received,
            recv_rate: rate(snap.received, snap.recv_window_ns, snap.elapsed_ns),
            expected: info.expected,
            lost,
            latency_us: snap.latency.clone(),
            errors: snap.errors.clone(),
            error_samples: snap.error_samples.clone(),
        }
    }

    /// Whether the run went as asked: no error and nothing lost.
    pub fn ok(&self) -> bool {
        self.errors.total == 0 && self.lost == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: &'static str, qos: u8, expected: Option<u64>) -> RunInfo {
        RunInfo {
            mode,
            transport: "tcp",
            version: 5,
            qos,
            clients: 2,
            expected,
            stopped_by: "test",
        }
    }

    #[test]
    fn local_counts_reach_the_shared_stats() {
        let stats = Stats::new();
        let mut a = Local::default();
        let mut b = Local::default();
        a.received = 3;
        b.received = 4;
        assert_eq!(a.flush(&stats), 3);
        assert_eq!(b.flush(&stats), 7);
        a.sent = 2;
        a.acked = 1;
        a.finish(&stats);
        let snap = stats.snapshot();
        assert_eq!((snap.sent, snap.acked, snap.received), (2, 1, 7));
        assert!(snap.recv_window_ns.is_some());
    }

    #[test]
    fn latencies_are_summarised_in_microseconds() {
        let stats = Stats::new();
        let mut local = Local::default();
        for us in 1..=1000u64 {
            local.record_latency(us * 1_000, &stats);
        }
        local.finish(&stats);
        let lat = stats.snapshot().latency;
        assert_eq!(lat.count, 1000);
        assert!((lat.min - 1.0).abs() < 0.01, "{lat:?}");
        assert!((lat.p50 - 500.0).abs() < 1.0, "{lat:?}");
        assert!((lat.p99 - 990.0).abs() < 1.0, "{lat:?}");
        assert!((lat.max - 1000.0).abs() < 1.0, "{lat:?}");
        assert!((lat.mean - 500.5).abs() < 1.0, "{lat:?}");
    }

    #[test]
    fn errors_are_counted_by_kind_with_samples() {
        let stats = Stats::new();
        stats.error(ErrorKind::Io, || "reset".into());
        stats.error(ErrorKind::Refused, || "0x87".into());
        for _ in 0..20 {
            stats.error(ErrorKind::Closed, || "closed".into());
        }
        let snap = stats.snapshot();
        assert_eq!(snap.errors.io, 1);
        assert_eq!(snap.errors.refused, 1);
        assert_eq!(snap.errors.closed, 20);
        assert_eq!(snap.errors.total, 22);
        assert_eq!(snap.error_samples.len(), MAX_ERROR_SAMPLES);
    }

    #[test]
    fn summary_rates_use_the_activity_window() {
        let snap = Snapshot {
            elapsed_ns: 10_000_000_000,
            received: 1_000_000,
            recv_window_ns: Some(2_000_000_000),
            sent: 0,
            ..Snapshot::default()
        };
        let summary = Summary::new(&info("sub", 0, Some(1_000_000)), &snap);
        assert_eq!(summary.recv_rate, 500_000.0);
        assert_eq!(summary.lost, 0);
        assert!(summary.ok());
    }

    #[test]
    fn summary_counts_losses() {
        let snap = Snapshot {
            elapsed_ns: 1_000_000_000,
            received: 990,
            ..Snapshot::default()
        };
        let summary = Summary::new(&info("sub", 0, Some(1000)), &snap);
        assert_eq!(summary.lost, 10);
        assert!(!summary.ok());
        // Without a window the whole run is the denominator.
        assert_eq!(summary.recv_rate, 990.0);
    }

    #[test]
    fn publisher_losses_count_acks_for_qos1_and_sends_for_qos0() {
        let snap = Snapshot {
            elapsed_ns: 1_000_000_000,
            sent: 100,
            acked: 90,
            ..Snapshot::default()
        };
        assert_eq!(Summary::new(&info("pub", 1, Some(100)), &snap).lost, 10);
        assert_eq!(Summary::new(&info("pub", 0, Some(100)), &snap).lost, 0);
        assert_eq!(Summary::new(&info("pub", 1, None), &snap).lost, 0);
    }

    #[test]
    fn connect_summary() {
        let stats = Stats::new();
        stats.connect_started(0);
        stats.connect_started(10);
        stats.connect_done(1_000_000);
        let snap = stats.snapshot();
        let summary = Summary::new(&info("conn", 0, None), &snap);
        assert_eq!(summary.connect.attempted, 2);
        assert_eq!(summary.connect.ok, 1);
        assert_eq!(summary.connect.failed, 1);
        assert!((summary.connect.per_connection_us.p50 - 1000.0).abs() < 1.0);
    }

    #[test]
    fn summary_serialises_to_json() {
        let summary = Summary::new(&info("sub", 1, None), &Snapshot::default());
        let json = serde_json::to_value(&summary).unwrap_or_default();
        assert_eq!(json["mode"], "sub");
        assert_eq!(json["latency_us"]["p99_9"], 0.0);
        assert_eq!(json["errors"]["total"], 0);
    }
}
