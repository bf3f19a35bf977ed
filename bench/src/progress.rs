//! The progress line printed to stderr every second, and the idle-timeout
//! watch of `sub --idle-timeout`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Mode;
use crate::run::Ctx;
use crate::stats::Snapshot;

const TICK: Duration = Duration::from_millis(100);
const TICKS_PER_LINE: u32 = 10;

/// Prints a progress line every second until the run stops, and stops the
/// run when `idle_timeout` passes without a message after the first one.
pub async fn report(ctx: Arc<Ctx>, idle_timeout: Option<Duration>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = ctx.stats.snapshot();
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = ctx.stop.cancelled() => return,
        }
        ticks += 1;
        let since = ctx.stats.since_last_recv();
        if idle_timeout.is_some_and(|idle| since.is_some_and(|since| since >= idle)) {
            ctx.request_stop("idle");
        }
        if ticks % TICKS_PER_LINE == 0 && !ctx.common.quiet {
            let current = ctx.stats.snapshot();
            eprintln!(
                "{}",
                line(ctx.mode, u64::from(ctx.common.count), &previous, &current)
            );
            previous = current;
        }
    }
}

fn per_second(before: u64, after: u64, ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    let per_s = u128::from(after.saturating_sub(before)) * 1_000_000_000 / u128::from(ns);
    u64::try_from(per_s).unwrap_or(u64::MAX)
}

/// One progress line: connections, then the mode's message counts and
/// rates since the previous line, then errors.
pub fn line(mode: Mode, clients: u64, before: &Snapshot, now: &Snapshot) -> String {
    let ns = now.elapsed_ns.saturating_sub(before.elapsed_ns);
    let mut out = format!(
        "[{:>7.1}s] {} conn {}/{} up {}",
        now.elapsed_ns as f64 / 1e9,
        mode.name(),
        now.ready,
        clients,
        now.connected,
    );
    match mode {
        Mode::Conn => {
            let _ = write!(out, " ({}/s)", per_second(before.ready, now.ready, ns));
        }
        Mode::Pub => {
            let _ = write!(
                out,
                " | sent {} ({}/s) acked {} ({}/s)",
                now.sent,
                per_second(before.sent, now.sent, ns),
                now.acked,
                per_second(before.acked, now.acked, ns),
            );
        }
        Mode::Sub => {
            let _ = write!(
                out,
                " | recv {} ({}/s) p99 {:.0}us",
                now.received,
                per_second(before.received, now.received, ns),
                now.latency.p99,
            );
        }
    }
    let _ = write!(out, " | errors {}", now.errors.total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_since_the_last_line() {
        let before = Snapshot {
            elapsed_ns: 1_000_000_000,
            sent: 1_000,
            ..Snapshot::default()
        };
        let now = Snapshot {
            elapsed_ns: 3_000_000_000,
            sent: 5_000,
            acked: 4_000,
            ready: 10,
            connected: 10,
            ..Snapshot::default()
        };
        let text = line(Mode::Pub, 10, &before, &now);
        assert!(text.contains("conn 10/10"), "{text}");
        assert!(text.contains("sent 5000 (2000/s)"), "{text}");
        assert!(text.contains("acked 4000 (2000/s)"), "{text}");
        assert!(text.ends_with("errors 0"), "{text}");
    }

    #[test]
    fn zero_interval_gives_zero_rate() {
        assert_eq!(per_second(0, 10, 0), 0);
        assert_eq!(per_second(10, 5, 1_000_000_000), 0);
    }
}
