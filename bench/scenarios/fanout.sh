#!/usr/bin/env bash
# Fan-out: 1 publisher -> N subscribers of the same topic, QoS 0, 64-byte
# payloads, as fast as possible. Measures deliveries per second (all
# subscribers together). Full size: 1 x 10,000 messages -> 100 subscribers.
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then SUBS=10 MSGS=500 TIMEOUT=20; else SUBS=100 MSGS=10000 TIMEOUT=120; fi
TOTAL=$((SUBS * MSGS))

start_sub sub -c "$SUBS" -t fanout/t -q 0 --expect "$TOTAL" --idle-timeout 5 --duration "$TIMEOUT"
run_pub pub -c 1 -t fanout/t -q 0 -s 64 -i 0 -L "$MSGS" --duration "$TIMEOUT"
finish sub "$SUB_PID"
check_sub sub fanout_qos0
result fanout_qos0_deliveries_per_s "$(json "$SCENARIO_DIR/sub.json" 's["recv_rate"]')" msg/s higher
scenario_exit
