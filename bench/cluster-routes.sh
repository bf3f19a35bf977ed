#!/usr/bin/env bash
# Route churn through the brokers' own path: CLIENTS clients on node 2 of a
# 2-node cluster subscribe to PER filters each (all distinct), then all
# disconnect. Measures how fast those subscriptions become routes in node
# 1's route index (SUBSCRIBE -> routes/ keys in etcd -> watch -> index), and
# how fast their removal does: route changes per second, end to end.
#
#   bench/cluster-routes.sh [CLIENTS] [PER]      (default 1000 x 10)
#
# Builds the binaries and installs etcd if missing; everything it starts is
# killed by PID at the end. Nodes run with route_sync on (start_cluster):
# run with BENCH_ROUTE_SYNC=false to measure without it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CLIENTS=${1:-1000}
PER=${2:-10}
TOTAL=$((CLIENTS * PER))
CLUSTER_NODES=2
start_scratch_cluster
ADMIN1=${BROKER_ADMIN_PORTS[0]}

# wait_remote_routes N SINCE: seconds from SINCE (a `date +%s.%N`) until
# node 1's index holds N remote routes.
wait_remote_routes() {
    python3 - "$ADMIN1" "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, want, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while time.time() - start < 120:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/node", timeout=2) as r:
        if json.load(r)["remote_routes"] == want:
            print(f"{time.time() - start:.3f}")
            sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
PY
}

topics=()
for ((j = 0; j < PER; j++)); do topics+=(-t "churn/%i/$j"); done
log "$CLIENTS clients x $PER filters on node 2 ($TOTAL routes)"
started=$(date +%s.%N)
"$BENCH_BIN" sub -h 127.0.0.1 -p "$BROKER_SUB_PORT" -c "$CLIENTS" "${topics[@]}" -q 0 \
    --duration 120 --quiet --json "$SCRATCH/sub.json" 2>"$SCRATCH/sub.err" &
CLIENT_PID=$!
add_s=$(wait_remote_routes "$TOTAL" "$started") || { log "routes did not all arrive"; exit 1; }
log "all $TOTAL routes in node 1's index after $add_s s"
started=$(date +%s.%N)
kill -TERM "$CLIENT_PID"
wait "$CLIENT_PID" || true
CLIENT_PID=
remove_s=$(wait_remote_routes 0 "$started") || { log "routes were not all removed"; exit 1; }
python3 - "$TOTAL" "$add_s" "$remove_s" <<'PY'
import sys
total, add, remove = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"routes added:   {total} in {add:.3f} s = {total / add:,.0f} route changes/s (from starting the clients)")
print(f"routes removed: {total} in {remove:.3f} s = {total / remove:,.0f} route changes/s (from stopping them)")
PY
