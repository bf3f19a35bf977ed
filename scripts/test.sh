#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, a
# bounded fuzz run of the codec, the protocol tests that drive a real
# `starling` with paho-mqtt and mosquitto_pub/sub, the cluster tests (real
# etcd, several nodes), a smoke run of every benchmark scenario, and the
# load tool over each of its transports.
#
#   FUZZ_SECONDS=N   fuzz time (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== rustdoc: no broken or private links"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== module graph: one way (docs/architecture.md)"
python3 scripts/check-modules.py

echo "== build"
cargo build --workspace --bins

echo "== unit and property tests"
cargo nextest run --workspace --no-fail-fast

echo "== codec fuzzing"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

echo "== protocol tests against a running starling"
export STARLING_BIN="$PWD/target/debug/starling"
python3 -m pytest e2e/protocol -q -p no:cacheprovider

echo "== protocol tests again, every idle connection parked at once"
STARLING_TEST_PARK_IDLE_AFTER_MS=1 python3 -m pytest e2e/protocol -q -p no:cacheprovider

echo "== cluster tests: real etcd, several starling processes"
python3 -m pytest e2e/cluster -q -p no:cacheprovider

echo "== benchmark smoke: every scenario, tiny sizes, no message lost"
# The bench scripts build the release binaries only when missing; build
# them here so that a tree with old ones measures this commit.
cargo build --release --bin starling --bin starling-bench
bench/smoke.sh

echo "== starling-bench over TLS, WebSocket and WebSocket over TLS (against Mosquitto)"
bench/transports.sh
