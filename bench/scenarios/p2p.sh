#!/usr/bin/env bash
# Point-to-point: N publisher/subscriber pairs, publisher i -> topic p2p/i
# -> subscriber i, QoS 1, 64-byte payloads, as fast as possible.
# Full size: 500 pairs x 200 messages.
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then PAIRS=20 MSGS=50 TIMEOUT=20; else PAIRS=500 MSGS=200 TIMEOUT=120; fi
TOTAL=$((PAIRS * MSGS))

start_sub sub -c "$PAIRS" -t 'p2p/%i' -q 1 --expect "$TOTAL" --idle-timeout 5 --duration "$TIMEOUT"
run_pub pub -c "$PAIRS" -t 'p2p/%i' -q 1 -s 64 -i 0 -L "$MSGS" --duration "$TIMEOUT"
finish sub "$SUB_PID"
check_sub sub p2p_qos1
result p2p_qos1_msgs_per_s "$(json "$SCENARIO_DIR/sub.json" 's["recv_rate"]')" msg/s higher
scenario_exit
