//! Writes the fuzz target's seed corpus (codec/fuzz/seeds/decode): valid
//! packets of every kind and version, so the fuzzer starts deep inside each
//! packet decoder instead of rediscovering the grammar. Run by hand after
//! changing the packet types:
//!
//! cargo run -p starling-codec --example fuzz_seeds

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = TestRunner::deterministic();
    for (v, version) in VERSIONS.into_iter().enumerate() {
        let strategy = packet(version);
        for i in 0..40 {
            let packet = strategy.new_tree(&mut runner).unwrap().current();
            let version = match &packet {
                starling_codec::Packet::Connect(c) => c.protocol,
                _ => version,
            };
            // The target reads its first byte as the size limit; 0 = none.
            let mut seed = vec![0u8];
            seed.extend_from_slice(&enc(&packet, version));
            std::fs::write(dir.join(format!("v{v}-{i:02}-{}", packet.name())), seed).unwrap();
        }
    }
}
