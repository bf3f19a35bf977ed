#!/usr/bin/env bash
# Soak: 10,000 clients reconnect their persistent
# sessions (clean start 0, expiry 7200 s) over and over for a while; the
# broker's RSS, sessions and expiry timers are reported at the start and at
# the end. Before the fix every reconnect left a sleeping timer task until
# its old expiry, so RSS grew with the number of reconnects.
#
#   bench/soak-reconnect.sh [CLIENTS] [SECONDS]     (default 10000 600)
#
# Not a test: it reports figures. Release build; STARLING_BIN and
# BENCH_BIN may point at other binaries.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CLIENTS=${1:-10000}
SECONDS_TOTAL=${2:-600}
ensure_bench
ensure_starling

SCRATCH=$(mktemp -d)
PORT=$(free_port)
ADMIN=$(free_port)
"$STARLING_BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    --max-connections $((CLIENTS + 100)) >"$SCRATCH/starling.log" 2>&1 &
BROKER=$!
trap 'kill "$BROKER" 2>/dev/null || true; wait "$BROKER" 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
wait_port "$PORT" 10

report() {
    python3 - "$ADMIN" "$BROKER" "$1" <<'PY'
import json, sys, urllib.request
admin, pid, when = sys.argv[1:]
with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/v1/node", timeout=5) as r:
    node = json.load(r)
rss_kib = int(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split()[0])
c = node["counters"]
print(f"{when}: rss {rss_kib / 1024:.1f} MiB, sessions {node['sessions']}, "
      f"session_timers {c['session_timers']}, connections {node['connections']}")
PY
}

round() {
    "$BENCH_BIN" conn -p "$PORT" -c "$CLIENTS" -C false -x 7200 --hold 0 \
        --quiet --json "$SCRATCH/conn.json" >/dev/null 2>>"$SCRATCH/bench.err"
}

round
report "after the first round (${CLIENTS} persistent sessions)"
rounds=1
deadline=$((SECONDS + SECONDS_TOTAL))
while ((SECONDS < deadline)); do
    round
    rounds=$((rounds + 1))
done
report "after ${rounds} rounds ($((rounds * CLIENTS)) reconnects, ${SECONDS_TOTAL} s)"
