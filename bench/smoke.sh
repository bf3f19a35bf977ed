#!/usr/bin/env bash
# Every benchmark scenario in --smoke size against Starling only: a fast
# check (well under a minute) that starling-bench works end to end and that
# no message is lost; then fan-in and p2p against a 3-node cluster
# (`cluster:fanin`, `cluster:p2p`). Fails (exit 1) if a scenario errors or
# loses messages. Builds target/release/starling and starling-bench if
# missing, installs etcd for the cluster runs if missing.
#
#   bench/smoke.sh [[cluster:]SCENARIO...]      (default: all of them)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if (($#)); then
    SCENARIOS=("$@")
else
    SCENARIOS=(fanin fanout p2p sharedsub latency conn-rate conn-idle cluster:fanin cluster:p2p)
fi

ensure_bench
ensure_starling
for scenario in "${SCENARIOS[@]}"; do
    if [[ "$scenario" == cluster:* ]]; then
        ensure_etcd
        break
    fi
done

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
    broker=starling
    script=$scenario
    if [[ "$scenario" == cluster:* ]]; then
        broker=cluster
        script=${scenario#cluster:}
    fi
    dir="$WORK/${scenario//:/-}"
    mkdir -p "$dir"
    port=$(free_port)
    start_broker "$broker" "$port" "$dir"
    rc=0
    t0=$SECONDS
    SCENARIO_PORT=$port SCENARIO_SUB_PORT=$BROKER_SUB_PORT SCENARIO_PORTS=$BROKER_PORTS \
        SCENARIO_BROKER_PID=$BROKER_PID SCENARIO_BROKER_PIDS=$BROKER_NODE_PIDS SCENARIO_SMOKE=1 \
        SCENARIO_DIR="$dir" BENCH_BIN="$BENCH_BIN" \
        timeout 120 "$BENCH_ROOT/bench/scenarios/$script.sh" >"$dir/out.txt" 2>"$dir/err.txt" || rc=$?
    for pid in $BROKER_NODE_PIDS; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$broker (pid $pid) exited during $scenario:" >&2
            tail -n 5 "$dir"/*.log >&2 || true
            rc=1
        fi
    done
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
