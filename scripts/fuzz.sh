#!/usr/bin/env bash
# Fuzzes the MQTT decoder (codec/fuzz, target `decode`) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]    default 30
#
# Exits non-zero if the fuzzer finds a crash; the reproducer is left in
# codec/fuzz/artifacts/decode/. cargo-fuzz needs nightly compiler flags, which
# the stable toolchain accepts with RUSTC_BOOTSTRAP=1.
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$root/codec"
# New inputs go to corpus/decode (not committed); seeds/decode holds
# committed valid packets of every kind to start from.
mkdir -p fuzz/corpus/decode
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run decode fuzz/corpus/decode fuzz/seeds/decode -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
