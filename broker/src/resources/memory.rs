//! The broker-wide memory watermark. Every per-client bound still leaves
//! many clients together able to take more memory than the node has; above
//! the watermark the broker defends itself instead of being killed for
//! running out of memory: new connections get CONNACK "server busy"
//! (0x89; 3.1.1: 3), and connections reading bulk (publishers) pause
//! between reads, the heaviest longest. Below 90 % of it, all is normal
//! again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the resident size is read (one small read of /proc).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The watermark when none is configured: this share of the memory the
/// process may use (its cgroup's limit, else the machine's memory).
const DEFAULT_SHARE_PERCENT: u64 = 80;

/// Whether the broker is above its watermark now.
#[derive(Debug, Default)]
pub struct MemoryPressure(AtomicBool);

impl MemoryPressure {
    pub fn is_high(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, high: bool) -> bool {
        self.0.swap(high, Ordering::Relaxed) != high
    }
}

/// The watermark in bytes: `memory_high_watermark_bytes`, or (0) the
/// default share of the memory limit; `None` when neither is known.
pub fn watermark(configured: u64) -> Option<u64> {
    if configured > 0 {
        return Some(configured);
    }
    memory_limit().map(|limit| limit / 100 * DEFAULT_SHARE_PERCENT)
}

/// Watches the resident size until `shutdown`, setting `pressure` above
/// the watermark (`configured`, see [`watermark`]). Takes the broker's
/// parts, not the broker: the broker holds the pressure, so this module
/// stays below it.
pub async fn watch(
    configured: u64,
    pressure: Arc<MemoryPressure>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Some(high) = watermark(configured) else {
        warn!("memory limit unknown and memory_high_watermark_bytes not set: no memory watermark");
        return;
    };
    let low = high / 10 * 9;
    info!(watermark_bytes = high, "memory watermark");
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(rss) = resident_bytes() else {
            continue;
        };
        if !pressure.is_high() && rss > high {
            pressure.set(true);
            Metrics::inc(&metrics.memory_pressure);
            warn!(
                resident_bytes = rss,
                watermark_bytes = high,
                "above the memory watermark: new connections refused, publishers slowed"
            );
        } else if pressure.is_high() && rss < low && pressure.set(false) {
            Metrics::dec(&metrics.memory_pressure);
            info!(resident_bytes = rss, "below the memory watermark again");
        }
    }
}

/// The process's resident size (`/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The memory this process may use: its cgroup's limit (v2, then v1) if
/// there is one, else the machine's memory.
fn memory_limit() -> Option<u64> {
    let cgroup_limit = |path: &str| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            // cgroup v1 says "no limit" with a huge number.
            .filter(|limit| *limit < (1 << 60))
    };
    cgroup_limit("/sys/fs/cgroup/memory.max")
        .or_else(|| cgroup_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .or_else(|| {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_size_and_a_limit_are_read_here() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1024 * 1024, "{rss}");
        let limit = memory_limit().expect("a cgroup limit or MemTotal");
        assert!(limit > rss);
        assert_eq!(watermark(12345), Some(12345));
        assert_eq!(watermark(0), Some(limit / 100 * DEFAULT_SHARE_PERCENT));
    }

    #[test]
    fn pressure_reports_changes_only() {
        let pressure = MemoryPressure::default();
        assert!(pressure.set(true));
        assert!(!pressure.set(true));
        assert!(pressure.is_high());
        assert!(pressure.set(false));
    }
}
