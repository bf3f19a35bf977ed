#!/usr/bin/env bash
# Runs one benchmark scenario against Starling and against Mosquitto with
# identical parameters, alternating the brokers, several repetitions, and
# prints the medians and the ratio Starling / Mosquitto.
#
#   bench/compare.sh SCENARIO [--reps N] [--smoke] [--brokers "starling mosquitto"]
#                    [--out FILE] [--keep]
#
# SCENARIO is one of bench/scenarios/*.sh without .sh: fanin, fanout, p2p,
# sharedsub, latency, conn-rate, conn-idle. Each run starts a fresh broker
# on a free 127.0.0.1 port and kills it (by PID) afterwards. Builds
# target/release/starling and starling-bench if missing and installs
# Debian's mosquitto if missing. Before each full-size run it waits (up to
# 10 minutes) for running cargo, rustc, fuzzing or pytest processes to
# end, so that they do not share the 2 cores with a measurement
# (BENCH_WAIT_BUILD=SECONDS changes the 10 minutes).
#
# --brokers    which brokers, in table order; the ratio column is the first
#              over the second. `cluster` is 3 Starling nodes on one etcd
#              (installed if missing), publishers on node 1, subscribers on
#              node 2, connections spread over all three:
#              --brokers "cluster starling" compares it with one node.
#              `baseline` is the Starling binary STARLING_BASELINE_BIN (an
#              older build): --brokers "baseline starling" is a before/after
#              table of a change.
# --out FILE   also write the Markdown table to FILE
# --keep       keep the scratch directory (broker logs, JSON summaries)
#
# Exit status: 0 when every run completed without loss or error, 1
# otherwise (the table is printed either way), 2 on bad usage.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

SCENARIO=
REPS=3
SMOKE=0
BROKERS="starling mosquitto"
OUT=
KEEP=0
while (($#)); do
    case "$1" in
        --reps) REPS=${2:?}; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --brokers) BROKERS=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z "$SCENARIO" ]] || usage; SCENARIO=$1; shift ;;
    esac
done
[[ -n "$SCENARIO" ]] || usage
SCRIPT="$BENCH_ROOT/bench/scenarios/$SCENARIO.sh"
if [[ ! -f "$SCRIPT" ]]; then
    echo "no scenario $SCENARIO; there are: $(cd "$BENCH_ROOT/bench/scenarios" && ls -- *.sh | grep -v common | sed 's/\.sh$//' | tr '\n' ' ')" >&2
    exit 2
fi
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || usage
read -r -a BROKER_LIST <<<"$BROKERS"

ensure_bench
ensure_starling
for b in "${BROKER_LIST[@]}"; do
    [[ "$b" != mosquitto ]] || ensure_mosquitto
    [[ "$b" != cluster ]] || ensure_etcd
done

WORK=$(mktemp -d)
cleanup() {
    stop_broker
    if ((KEEP)); then
        log "scratch files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# Measure one binary throughout, even if a build replaces the original.
cp "$STARLING_BIN" "$WORK/starling"
STARLING_BIN="$WORK/starling"
for b in "${BROKER_LIST[@]}"; do
    if [[ "$b" == baseline ]]; then
        cp "${STARLING_BASELINE_BIN:?set STARLING_BASELINE_BIN to the Starling binary to compare with}" "$WORK/baseline"
        STARLING_BASELINE_BIN="$WORK/baseline"
        log "baseline: $(sha256sum "$STARLING_BASELINE_BIN" | cut -c1-12)"
    fi
done
log "starling: $(sha256sum "$STARLING_BIN" | cut -c1-12), built $(date -r "$BENCH_ROOT/target/release/starling" '+%F %T'), HEAD $(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); $("$(mosquitto_bin)" -h 2>/dev/null | head -1)"

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
FAILURES=0
for ((rep = 1; rep <= REPS; rep++)); do
    # Alternate which broker goes first.
    order=("${BROKER_LIST[@]}")
    if ((rep % 2 == 0)); then
        order=()
        for ((i = ${#BROKER_LIST[@]} - 1; i >= 0; i--)); do order+=("${BROKER_LIST[i]}"); done
    fi
    for broker in "${order[@]}"; do
        if ((!SMOKE)) && ! wait_no_build "${BENCH_WAIT_BUILD:-600}"; then
            log "warning: a cargo/rustc process is still running; this run shares the CPU with it"
        fi
        dir="$WORK/$broker-$rep"
        mkdir -p "$dir"
        port=$(free_port)
        start_broker "$broker" "$port" "$dir"
        log "$SCENARIO rep $rep/$REPS: $broker (pid $BROKER_PID, port $port, load $(cut -d' ' -f1-3 /proc/loadavg))"
        rc=0
        SCENARIO_PORT=$port SCENARIO_SUB_PORT=$BROKER_SUB_PORT SCENARIO_PORTS=$BROKER_PORTS \
            SCENARIO_BROKER_PID=$BROKER_PID SCENARIO_BROKER_PIDS=$BROKER_NODE_PIDS SCENARIO_SMOKE=$SMOKE \
            SCENARIO_DIR="$dir" BENCH_BIN="$BENCH_BIN" \
            timeout 900 "$SCRIPT" >"$dir/out.txt" 2>"$dir/err.txt" || rc=$?
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$broker exited during the run; its log:"
            tail -5 "$dir/$broker.log" >&2 || true
            rc=1
        fi
        stop_broker
        while read -r tag metric value unit better; do
            case "$tag" in
                RESULT) printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$broker" "$rep" "$metric" "$value" "$unit" "$better" >>"$RESULTS" ;;
                LOST) printf '%s\t%s\tlost:%s\t%s\tcount\tlower\n' "$broker" "$rep" "$metric" "$value" >>"$RESULTS" ;;
            esac
        done <"$dir/out.txt"
        grep -h '^RESULT' "$dir/out.txt" | sed "s/^RESULT /  $broker: /" >&2 || true
        if ((rc != 0)); then
            FAILURES=$((FAILURES + 1))
            log "$broker rep $rep failed (exit $rc):"
            tail -5 "$dir/err.txt" >&2 || true
        fi
        sleep 1
    done
done

TABLE="$WORK/table.md"
python3 - "$RESULTS" "$SCENARIO" "$REPS" "$SMOKE" "${BROKER_LIST[*]}" >"$TABLE" <<'EOF'
import statistics
import sys
from collections import defaultdict

path, scenario, reps, smoke, brokers = sys.argv[1:6]
brokers = brokers.split()
values = defaultdict(lambda: defaultdict(list))
meta = {}
order = []
for line in open(path):
    broker, rep, metric, value, unit, better = line.rstrip("\n").split("\t")
    try:
        number = float(value)
    except ValueError:
        continue
    values[metric][broker].append(number)
    meta[metric] = (unit, better)
    if metric not in order:
        order.append(metric)

def fmt(x):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"

mode = "smoke" if smoke == "1" else "full"
print(f"### {scenario} ({mode} size, {reps} repetition(s), medians)\n")
head = ["metric", "unit"] + brokers
# The first broker against the second (Starling against Mosquitto, or a
# cluster against a single node).
ratio = len(brokers) >= 2
if ratio:
    head.append(f"{brokers[0]} ÷ {brokers[1]}")
head.append("runs")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for metric in order:
    unit, better = meta[metric]
    medians = {}
    for b in brokers:
        runs = values[metric].get(b, [])
        medians[b] = statistics.median(runs) if runs else None
    is_loss = metric.startswith("lost:")
    row = [metric, unit + ("" if is_loss else f" ({better} is better)")]
    row += [fmt(sum(values[metric].get(b, [])) if is_loss else medians[b]) for b in brokers]
    if ratio:
        s, m = medians[brokers[0]], medians[brokers[1]]
        row.append("–" if is_loss or s is None or not m else f"{s / m:.2f}")
    runs = "; ".join(
        b + " " + ", ".join(fmt(v) for v in values[metric].get(b, [])) for b in brokers
    )
    row.append(("total lost: " if is_loss else "") + runs)
    print("| " + " | ".join(row) + " |")
EOF
echo
cat "$TABLE"
if [[ -n "$OUT" ]]; then
    cp "$TABLE" "$OUT"
fi
if ((FAILURES)); then
    log "$FAILURES run(s) failed or lost messages"
    exit 1
fi
