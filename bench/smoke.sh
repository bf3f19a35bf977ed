#!/usr/bin/env bash
# Every benchmark scenario in --smoke size against Starling only: a fast
# check (well under a minute) that starling-bench works end to end and that
# no message is lost. Fails (exit 1) if a scenario errors or loses
# messages. Builds target/release/starling and starling-bench if missing.
#
#   bench/smoke.sh [SCENARIO...]      (default: all of bench/scenarios)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if (($#)); then
    SCENARIOS=("$@")
else
    SCENARIOS=(fanin fanout p2p sharedsub latency conn-rate conn-idle)
fi

ensure_bench
ensure_starling

WORK=$(mktemp -d)
cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

failed=()
start=$SECONDS
for scenario in "${SCENARIOS[@]}"; do
    dir="$WORK/$scenario"
    mkdir -p "$dir"
    port=$(free_port)
    start_broker starling "$port" "$dir"
    rc=0
    t0=$SECONDS
    SCENARIO_PORT=$port SCENARIO_BROKER_PID=$BROKER_PID SCENARIO_SMOKE=1 \
        SCENARIO_DIR="$dir" BENCH_BIN="$BENCH_BIN" \
        timeout 120 "$BENCH_ROOT/bench/scenarios/$scenario.sh" >"$dir/out.txt" 2>"$dir/err.txt" || rc=$?
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "starling exited during $scenario:" >&2
        tail -5 "$dir/starling.log" >&2 || true
        rc=1
    fi
    stop_broker
    results=$(grep '^RESULT' "$dir/out.txt" | awk '{ printf "%s=%s %s  ", $2, $3, $4 }')
    if ((rc == 0)); then
        echo "ok   $scenario ($((SECONDS - t0)) s): $results"
    else
        echo "FAIL $scenario ($((SECONDS - t0)) s, exit $rc): $results"
        grep '^LOST' "$dir/out.txt" | grep -v ' 0$' | sed 's/^/     /' || true
        sed 's/^/     /' "$dir/err.txt" | tail -8
        failed+=("$scenario")
    fi
done
echo "bench smoke took $((SECONDS - start)) s"
echo "smoke: $((${#SCENARIOS[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
