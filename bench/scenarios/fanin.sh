#!/usr/bin/env bash
# Fan-in: N publishers -> 1 subscriber on a wildcard filter, 64-byte
# payloads, as fast as possible; once at QoS 0 and once at QoS 1 (publish
# and subscription). Measures the rate at which the subscriber receives.
# Full size: 10 publishers x 50,000 messages (500,000 per QoS).
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then PUBS=2 MSGS=2000 TIMEOUT=20; else PUBS=10 MSGS=50000 TIMEOUT=120; fi
TOTAL=$((PUBS * MSGS))

for qos in 0 1; do
    start_sub "sub$qos" -c 1 -t "fanin/$qos/#" -q "$qos" --expect "$TOTAL" \
        --idle-timeout 5 --duration "$TIMEOUT"
    run_pub "pub$qos" -c "$PUBS" -t "fanin/$qos/%i" -q "$qos" -s 64 -i 0 -L "$MSGS" \
        --duration "$TIMEOUT"
    finish "sub$qos" "$SUB_PID"
    check_sub "sub$qos" "fanin_qos${qos}"
    result "fanin_qos${qos}_msgs_per_s" "$(json "$SCENARIO_DIR/sub$qos.json" 's["recv_rate"]')" msg/s higher
done
scenario_exit
