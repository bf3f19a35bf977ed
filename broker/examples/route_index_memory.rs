//! Memory of the remote route index: inserts N routes of another node
//! (per-device filters `devices/<n>/cmd/#`, the case that grows with a
//! fleet) through the index's mirror sink, as a watch would, and prints the
//! growth of this process's resident memory per route.
//!
//!     cargo run --release --example route_index_memory -- 1000000

use starling::cluster::etcd::keys::Keys;
use starling::cluster::etcd::mirror::MirrorSink;
use starling::cluster::routes::index::RouteIndex;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let keys = Keys::new("scale");
    let index = RouteIndex::new(
        "me",
        keys.clone(),
        starling::Config::default().topic_limits(),
        std::time::Duration::from_secs(60),
    );
    let mut sink = index.sink();
    // The keys, built before the first reading: they are the watch's, not
    // the index's.
    let routes: Vec<String> = (0..count)
        .map(|n| keys.route("other", &format!("devices/{n}/cmd/#")))
        .collect();
    let before = rss_bytes();
    for key in &routes {
        sink.put(key, b"", 0);
    }
    let after = rss_bytes();
    assert_eq!(index.len(), count);
    let grown = after.saturating_sub(before);
    println!(
        "{count} routes: index grew the process by {:.1} MiB, {} bytes per route",
        grown as f64 / (1024.0 * 1024.0),
        grown / count.max(1) as u64
    );
}
