#!/usr/bin/env bash
# Connection rate: time for N clients to connect (TCP + CONNECT/CONNACK,
# MQTT 5, clean start), from 4 loopback source addresses, twice:
#   burst: started as fast as possible, up to 1,000 handshakes outstanding
#          (a reconnect storm: the broker's accept backlog matters);
#   paced: at most 64 handshakes outstanding (below any listen backlog:
#          the broker's accept-and-handshake speed alone).
# Full size: 10,000 connections each.
source "$(dirname "$0")/common.sh"

if ((SMOKE)); then CONNS=200; else CONNS=10000; fi
SOURCES=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

for variant in burst paced; do
    if [[ $variant == burst ]]; then pending=1000; else pending=64; fi
    rc=0
    f="$SCENARIO_DIR/conn-$variant.json"
    BENCH_PORT=$ALL_PORTS bench conn -c "$CONNS" -R 0 --max-pending "$pending" --ifaddr "$SOURCES" --hold 0 \
        --duration 60 --json "$f" 2>"$SCENARIO_DIR/conn-$variant.err" || rc=$?
    if ((rc != 0)) || [[ ! -s "$f" ]]; then
        echo "conn ($variant) exited with $rc: $(tail -3 "$SCENARIO_DIR/conn-$variant.err" | tr '\n' ' ')" >&2
        FAILED=1
        [[ -s "$f" ]] || continue
    fi
    ok=$(json "$f" 's["connect"]["ok"]')
    echo "LOST connections_$variant $((CONNS - ok))"
    ((ok == CONNS)) || FAILED=1
    result "connect_${CONNS}_${variant}_time_s" "$(json "$f" 's["connect"]["time_s"]')" s lower
    result "connect_${variant}_p99_ms" "$(json "$f" 'round(s["connect"]["per_connection_us"]["p99"]/1000, 3)')" ms lower
    sleep 1
done
scenario_exit
