#!/usr/bin/env bash
# starling-bench over each of its transports — TLS, WebSocket and WebSocket
# over TLS (plain TCP is what every scenario uses) — with MQTT 3.1.1 and 5.0:
# Starling serves only MQTT over TCP, so the other side here is Debian's
# Mosquitto, with a certificate made by openssl for this run. For each
# combination one subscriber and two publishers exchange 2 × 100 QoS 1
# messages; fails (exit 1) if a run errors or a message is missing.
# Installs mosquitto if missing; builds starling-bench if missing.
#
#   bench/transports.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
ensure_bench
ensure_mosquitto

WORK=$(mktemp -d)
SUB_PID=
cleanup() {
    [[ -z "$SUB_PID" ]] || stop_pid "$SUB_PID"
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# A CA, and a certificate for 127.0.0.1 and localhost that it signed.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench test CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null

# Mosquitto started as root drops to the mosquitto user, which must read
# these. Its WebSocket listeners cannot take an address (libwebsockets
# binds an interface: lo) and do not start without a plain listener
# beside them (eclipse-mosquitto/mosquitto#2284).
chmod 755 "$WORK"
chmod 644 "$WORK"/*.pem "$WORK"/*.key
declare -A PORT
for transport in tcp tls ws wss; do PORT[$transport]=$(free_port); done
cat >"$WORK/mosquitto.conf" <<EOF
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
listener ${PORT[tcp]} 127.0.0.1
listener ${PORT[tls]} 127.0.0.1
certfile $WORK/server.pem
keyfile $WORK/server.key
listener ${PORT[ws]}
bind_interface lo
protocol websockets
listener ${PORT[wss]}
bind_interface lo
protocol websockets
certfile $WORK/server.pem
keyfile $WORK/server.key
EOF
chmod 644 "$WORK/mosquitto.conf"
"$(mosquitto_bin)" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
for transport in tcp tls ws wss; do
    if ! wait_port "${PORT[$transport]}" 10; then
        echo "mosquitto is not listening on ${PORT[$transport]} ($transport); its log:" >&2
        tail -20 "$WORK/mosquitto.log" >&2
        exit 1
    fi
done

# What a run must show: every message received over the transport asked
# for, no error on either side.
cat >"$WORK/check.py" <<'PY'
import json, sys
sub, pub = (json.load(open(p)) for p in sys.argv[1:3])
transport, want = sys.argv[3], int(sys.argv[4])
got = sub["received"]
problems = []
if sub["transport"] != transport or pub["transport"] != transport:
    problems.append(f"ran over {sub['transport']} / {pub['transport']}")
if got != want or sub["lost"] != 0:
    problems.append(f"{sub['lost']} lost")
if sub["errors"]["total"] or pub["errors"]["total"]:
    problems.append(f"errors: {sub['errors']} / {pub['errors']}")
print(f"received {got}/{want}, latency p50 {sub['latency_us']['p50']:.0f} us"
      + ("" if not problems else ": " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY

PUBS=2 MSGS=100
failed=0
for transport in tls ws wss; do
    for version in 4 5; do
        dir="$WORK/$transport-v$version"
        mkdir -p "$dir"
        common=(-h 127.0.0.1 -p "${PORT[$transport]}" --transport "$transport" -V "$version"
            --cafile "$WORK/ca.pem" --quiet)
        "$BENCH_BIN" sub "${common[@]}" -c 1 -t "t/$transport/$version/#" -q 1 \
            --expect $((PUBS * MSGS)) --idle-timeout 5 --duration 30 \
            --json "$dir/sub.json" --ready-file "$dir/ready" 2>"$dir/sub.err" &
        SUB_PID=$!
        for _ in $(seq 200); do [[ -f "$dir/ready" ]] && break; sleep 0.05; done
        rc=0
        "$BENCH_BIN" pub "${common[@]}" -c "$PUBS" -t "t/$transport/$version/%i" -q 1 -s 64 \
            -i 0 -L "$MSGS" --duration 30 --json "$dir/pub.json" 2>"$dir/pub.err" || rc=$?
        wait "$SUB_PID" || rc=$?
        SUB_PID=
        summary=$(python3 "$WORK/check.py" "$dir/sub.json" "$dir/pub.json" "$transport" \
            "$((PUBS * MSGS))") || rc=$?
        if ((rc == 0)); then
            echo "ok   $transport MQTT v$version: $summary"
        else
            echo "FAIL $transport MQTT v$version (exit $rc): $summary"
            tail -n 3 "$dir"/*.err | sed 's/^/     /'
            failed=1
        fi
    done
done
exit $failed
