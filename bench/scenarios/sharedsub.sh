#!/usr/bin/env bash
# Shared subscription: N publishers -> a group of M subscribers of
# $share/g/shared/#, QoS 1, 64-byte payloads, as fast as possible; every
# message must reach exactly one member. Full size: 10 x 20,000 -> 10.
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then PUBS=2 MSGS=1000 SUBS=4 TIMEOUT=20; else PUBS=10 MSGS=20000 SUBS=10 TIMEOUT=120; fi
TOTAL=$((PUBS * MSGS))

start_sub sub -c "$SUBS" -t 'shared/#' --shared-group g -q 1 --expect "$TOTAL" \
    --idle-timeout 5 --duration "$TIMEOUT"
run_pub pub -c "$PUBS" -t 'shared/%i' -q 1 -s 64 -i 0 -L "$MSGS" --duration "$TIMEOUT"
finish sub "$SUB_PID"
check_sub sub sharedsub_qos1
received=$(json "$SCENARIO_DIR/sub.json" 's["received"]')
if ((received > TOTAL)); then
    echo "sharedsub: $received deliveries for $TOTAL messages (duplicates)" >&2
    FAILED=1
fi
result sharedsub_qos1_msgs_per_s "$(json "$SCENARIO_DIR/sub.json" 's["recv_rate"]')" msg/s higher
scenario_exit
