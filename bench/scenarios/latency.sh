#!/usr/bin/env bash
# Latency: QoS 1 at a fixed total rate from 10 publishers to 1 subscriber,
# 64-byte payloads; end-to-end latency percentiles from the subscriber.
# Full size: 10,000 msg/s for 10 s (100,000 messages).
# Each publisher sends at its own phase, 0.1 ms after the previous one, on a
# microsecond timer; LATENCY_PACING=coarse paces on 1 ms ticks instead, so
# the 10 publishers send together, a burst of 10 every millisecond.
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then PUBS=2 RATE=1000 MSGS=500 TIMEOUT=20; else PUBS=10 RATE=10000 MSGS=10000 TIMEOUT=60; fi
TOTAL=$((PUBS * MSGS))

start_sub sub -c 1 -t 'latency/#' -q 1 --expect "$TOTAL" --idle-timeout 5 --duration "$TIMEOUT"
case "${LATENCY_PACING:-fine}" in
    fine) PACING=() ;;
    coarse) PACING=(--coarse-timer) ;;
    *) echo "LATENCY_PACING must be fine or coarse, not ${LATENCY_PACING}" >&2; exit 2 ;;
esac
run_pub pub -c "$PUBS" -t 'latency/%i' -q 1 -s 64 --rate "$RATE" -L "$MSGS" --duration "$TIMEOUT" "${PACING[@]}"
finish sub "$SUB_PID"
check_sub sub latency_qos1
f="$SCENARIO_DIR/sub.json"
result latency_qos1_p50_us "$(json "$f" 's["latency_us"]["p50"]')" us lower
result latency_qos1_p99_us "$(json "$f" 's["latency_us"]["p99"]')" us lower
result latency_qos1_p99_9_us "$(json "$f" 's["latency_us"]["p99_9"]')" us lower
result latency_qos1_max_us "$(json "$f" 's["latency_us"]["max"]')" us lower
result latency_qos1_recv_rate "$(json "$f" 's["recv_rate"]')" msg/s higher
scenario_exit
