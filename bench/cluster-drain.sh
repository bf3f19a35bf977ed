#!/usr/bin/env bash
# Drain time for N persistent sessions: N MQTT 5 clients with persistent
# sessions (Session Expiry 600 s, one subscription each) on node 1 of a
# 3-node cluster; POST /api/v1/node/drain on node 1; the clients do not
# come back (starling-bench does not reconnect), so after
# drain_session_wait_secs every session is handed to node 2 or 3
# (AdoptSession). Measures the time from the drain request to node 1
# reporting "drained", and checks that nodes 2 and 3 then hold N sessions.
#
#   bench/cluster-drain.sh [SESSIONS]        (default 2000)
#
# Nodes run with --drain-rate 5000 --drain-session-wait-secs 1 (override
# with BENCH_NODE_ARGS). Everything started is killed by PID at the end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SESSIONS=${1:-2000}
BENCH_NODE_ARGS=${BENCH_NODE_ARGS:---drain-rate 5000 --drain-session-wait-secs 1}
start_scratch_cluster
log "$SESSIONS persistent sessions on node 1"
"$BENCH_BIN" sub -h 127.0.0.1 -p "${BROKER_PORTS%%,*}" -c "$SESSIONS" -C false -x 600 -t 'drain/%i' -q 1 \
    --duration 300 --idle-timeout 300 --quiet \
    --ready-file "$SCRATCH/ready" --json "$SCRATCH/sub.json" 2>"$SCRATCH/sub.err" &
CLIENT_PID=$!
while [[ ! -f "$SCRATCH/ready" ]]; do
    kill -0 "$CLIENT_PID" 2>/dev/null || { log "clients exited: $(tail -3 "$SCRATCH/sub.err")"; exit 1; }
    sleep 0.1
done

python3 - "$SESSIONS" "${BROKER_ADMIN_PORTS[@]}" <<'PY'
import json, sys, time, urllib.request
sessions, ports = int(sys.argv[1]), sys.argv[2:]
def node(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/node", timeout=5) as r:
        return json.load(r)
before = node(ports[0])["sessions"]
assert before == sessions, f"node 1 holds {before} sessions, expected {sessions}"
start = time.monotonic()
import os
urllib.request.urlopen(urllib.request.Request(
    f"http://127.0.0.1:{ports[0]}/api/v1/node/drain", method="POST",
    headers={"Authorization": f"Bearer {os.environ['BENCH_ADMIN_TOKEN']}",
             "Content-Type": "application/json"}), timeout=5)
while node(ports[0])["state"] != "drained":
    if time.monotonic() - start > 300:
        sys.exit(f"not drained after 300 s: {node(ports[0])}")
    time.sleep(0.02)
took = time.monotonic() - start
elsewhere = sum(node(p)["sessions"] for p in ports[1:])
print(f"drained {sessions} persistent sessions in {took:.2f} s "
      f"(including the 1 s drain_session_wait_secs); nodes 2 and 3 now hold {elsewhere} sessions")
sys.exit(0 if elsewhere >= sessions else 1)
PY
