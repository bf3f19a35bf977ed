# Sourced by every scenario. A scenario runs starling-bench against a
# broker that is already listening and prints its measurements on stdout:
#
#   RESULT <metric> <value> <unit> <higher|lower>   (which way is better)
#   LOST <what> <count>                              (messages not delivered)
#
# and exits non-zero when the tool failed or a message was lost.
#
# Environment (set by compare.sh / smoke.sh):
#   SCENARIO_PORT        broker port on 127.0.0.1 (required); publishers'
#                        node when the broker is a cluster
#   SCENARIO_SUB_PORT    subscribers' port (default SCENARIO_PORT): another
#                        node of a cluster
#   SCENARIO_PORTS       every node's port, comma separated (default
#                        SCENARIO_PORT): connection scenarios spread over them
#   SCENARIO_BROKER_PID  broker PID, for memory readings (conn-idle)
#   SCENARIO_BROKER_PIDS every node's PID, space separated (default
#                        SCENARIO_BROKER_PID)
#   SCENARIO_SMOKE       1 = tiny parameters (seconds), 0 = full size
#   SCENARIO_DIR         scratch directory (default: a new temporary one)
#   BENCH_BIN            the starling-bench binary

set -euo pipefail

: "${SCENARIO_PORT:?SCENARIO_PORT is required}"
SUB_PORT=${SCENARIO_SUB_PORT:-$SCENARIO_PORT}
ALL_PORTS=${SCENARIO_PORTS:-$SCENARIO_PORT}
SMOKE=${SCENARIO_SMOKE:-0}
BENCH_BIN=${BENCH_BIN:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/starling-bench"}
if [[ -z "${SCENARIO_DIR:-}" ]]; then
    SCENARIO_DIR=$(mktemp -d)
fi
FAILED=0
BG_PIDS=()

cleanup_scenario() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup_scenario EXIT
trap 'exit 143' TERM INT

# bench MODE ARGS...: starling-bench against the broker under test
# (SCENARIO_PORT, or BENCH_PORT for one call).
bench() {
    local mode=$1
    shift
    "$BENCH_BIN" "$mode" -h 127.0.0.1 -p "${BENCH_PORT:-$SCENARIO_PORT}" --quiet "$@"
}

# bench_exec MODE ARGS...: like bench, but replaces the (sub)shell, so that
# `bench_exec ... &` leaves $! the PID of starling-bench itself.
bench_exec() {
    local mode=$1
    shift
    exec "$BENCH_BIN" "$mode" -h 127.0.0.1 -p "${BENCH_PORT:-$SCENARIO_PORT}" --quiet "$@"
}

# json FILE EXPR: a value from a summary, EXPR in Python over `s`.
json() {
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# wait_ready FILE SECONDS PID: until FILE exists; fails if PID died first.
wait_ready() {
    local file=$1 deadline=$((SECONDS + $2)) pid=$3
    while [[ ! -f "$file" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "client exited before it was ready" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "clients not ready after $2 s" >&2
            return 1
        fi
        sleep 0.05
    done
}

# start_sub NAME ARGS...: a `sub` in the background (on SUB_PORT), waited
# for until every client has subscribed. Its summary goes to
# $SCENARIO_DIR/NAME.json.
start_sub() {
    local name=$1
    shift
    rm -f "$SCENARIO_DIR/$name.ready" "$SCENARIO_DIR/$name.json"
    BENCH_PORT=$SUB_PORT bench_exec sub --json "$SCENARIO_DIR/$name.json" --ready-file "$SCENARIO_DIR/$name.ready" "$@" \
        2>"$SCENARIO_DIR/$name.err" &
    SUB_PID=$!
    BG_PIDS+=("$SUB_PID")
    wait_ready "$SCENARIO_DIR/$name.ready" 60 "$SUB_PID"
}

# finish NAME PID: waits for a background client; a failure is reported
# (its summary still counts).
finish() {
    local name=$1 pid=$2 rc=0
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        echo "$name exited with $rc: $(tail -3 "$SCENARIO_DIR/$name.err" 2>/dev/null | tr '\n' ' ')" >&2
        FAILED=1
    fi
}

# run_pub NAME ARGS...: a `pub` in the foreground.
run_pub() {
    local name=$1 rc=0
    shift
    bench pub --json "$SCENARIO_DIR/$name.json" "$@" 2>"$SCENARIO_DIR/$name.err" || rc=$?
    if ((rc != 0)); then
        echo "$name exited with $rc: $(tail -3 "$SCENARIO_DIR/$name.err" | tr '\n' ' ')" >&2
        FAILED=1
    fi
}

result() { echo "RESULT $1 $2 $3 $4"; }

# check_sub NAME WHAT: reports losses and errors of a `sub` summary.
check_sub() {
    local name=$1 what=$2 file="$SCENARIO_DIR/$1.json"
    if [[ ! -s "$file" ]]; then
        echo "$name wrote no summary" >&2
        FAILED=1
        return
    fi
    local lost errors
    lost=$(json "$file" 's["lost"]')
    errors=$(json "$file" 's["errors"]["total"]')
    echo "LOST $what $lost"
    if ((lost != 0 || errors != 0)); then
        echo "$what: $(json "$file" 's["received"]') of $(json "$file" 's["expected"]') received, $errors errors $(json "$file" 's["error_samples"][:2]')" >&2
        FAILED=1
    fi
}

scenario_exit() {
    exit "$FAILED"
}
