#!/usr/bin/env bash
# Idle connections: the broker's resident memory (VmRSS in
# /proc/PID/status) before and after N idle MQTT 5 clients connect;
# memory per connection = growth / N. Full size: 10,000 connections.
source "$(dirname "$0")/common.sh"

: "${SCENARIO_BROKER_PID:?SCENARIO_BROKER_PID is required}"
if ((SMOKE)); then CONNS=200; else CONNS=10000; fi
SOURCES=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

# Summed over every node of a cluster (the connections are spread over them).
rss_kb() {
    local pid total=0
    for pid in ${SCENARIO_BROKER_PIDS:-$SCENARIO_BROKER_PID}; do
        total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}

sleep 1
before=$(rss_kb)
rm -f "$SCENARIO_DIR/conn.ready"
BENCH_PORT=$ALL_PORTS bench_exec conn -c "$CONNS" -R 0 --max-pending 1000 --ifaddr "$SOURCES" --hold 30 --duration 90 \
    --ready-file "$SCENARIO_DIR/conn.ready" --json "$SCENARIO_DIR/conn.json" \
    2>"$SCENARIO_DIR/conn.err" &
CONN_PID=$!
BG_PIDS+=("$CONN_PID")
wait_ready "$SCENARIO_DIR/conn.ready" 60 "$CONN_PID"
# Measure once the broker is done with the connects: its RSS has not moved
# by more than 64 KiB for 3 seconds in a row (handshake buffers returned,
# idle connections parked), or after 20 s.
after=$(rss_kb)
steady=0
for _ in $(seq 20); do
    sleep 1
    now=$(rss_kb)
    change=$((now > after ? now - after : after - now))
    after=$now
    if ((change <= 64)); then steady=$((steady + 1)); else steady=0; fi
    ((steady < 3)) || break
done
ready=$(cat "$SCENARIO_DIR/conn.ready")
kill -TERM "$CONN_PID"
finish conn "$CONN_PID"
echo "LOST connections $((CONNS - ready))"
if ((ready != CONNS)); then
    FAILED=1
    ((ready > 0)) || exit 1
fi
result idle_rss_growth_mib "$(python3 -c "print(round(($after - $before) / 1024, 1))")" MiB lower
result idle_bytes_per_conn "$(python3 -c "print(round(($after - $before) * 1024 / $ready))")" B lower
scenario_exit
