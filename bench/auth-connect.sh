#!/usr/bin/env bash
# Connect rate with a password file: N clients, each its own user
# (dev-<i> / pw-<i>), connect (MQTT 5, clean start) from 4 loopback
# addresses, at most 1,000 handshakes outstanding; then all of them
# connect again (a reconnect storm). Against Starling without a password
# file (anonymous), Starling with the file, and Mosquitto with the same
# file. The file's hashes are $7$ PBKDF2-SHA512 at ITERATIONS (101 is what
# mosquitto_passwd 2.0 writes by default; starling passwd writes 100,000).
#
#   bench/auth-connect.sh [CLIENTS] [ITERATIONS]     (default 10000 101)
#
# Not a test: it prints the times. Release build; STARLING_BIN and
# BENCH_BIN may point at other binaries.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CLIENTS=${1:-10000}
ITERATIONS=${2:-101}
ensure_bench
ensure_starling
ensure_mosquitto

SCRATCH=$(mktemp -d)
log "scratch: $SCRATCH (KEEP=1 keeps it)"
BROKER=
cleanup() {
    [[ -z "$BROKER" ]] || stop_pid "$BROKER"
    [[ -n "${KEEP:-}" ]] || rm -rf "$SCRATCH"
}
trap cleanup EXIT

log "writing $CLIENTS users at $ITERATIONS iterations"
python3 - "$SCRATCH/passwd" "$CLIENTS" "$ITERATIONS" <<'PY'
import base64, hashlib, os, sys
path, count, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "w") as f:
    for i in range(count):
        salt = os.urandom(12)
        key = hashlib.pbkdf2_hmac("sha512", f"pw-{i}".encode(), salt, iterations, 64)
        f.write(f"dev-{i}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}\n")
PY
chmod 644 "$SCRATCH/passwd"

# run_round NAME ROUND: one connect of every client; prints the seconds.
run_round() {
    local name=$1 round=$2 f="$SCRATCH/$1-$2.json"
    "$BENCH_BIN" conn -h 127.0.0.1 -p "$PORT" --quiet -c "$CLIENTS" -R 0 --max-pending 1000 \
        --ifaddr 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --hold 0 --duration 120 \
        -u 'dev-%i' -P 'pw-%i' --json "$f" 2>"$SCRATCH/$name-$round.err" || true
    python3 - "$f" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["connect"]
print("%d ok, %.2f s, p99 %.1f ms" % (c["ok"], c["time_s"], c["per_connection_us"]["p99"] / 1000))
PY
}

for name in starling-anonymous starling-passwd mosquitto-passwd; do
    PORT=$(free_port)
    case "$name" in
        starling-anonymous)
            "$STARLING_BIN" --listen "127.0.0.1:$PORT" --max-connections 1000000 --log-level warn \
                >"$SCRATCH/$name.log" 2>&1 &
            ;;
        starling-passwd)
            "$STARLING_BIN" --listen "127.0.0.1:$PORT" --max-connections 1000000 --log-level warn \
                --password-file "$SCRATCH/passwd" >"$SCRATCH/$name.log" 2>&1 &
            ;;
        mosquitto-passwd)
            chmod 755 "$SCRATCH"
            printf 'listener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\nmax_connections -1\nlog_dest stderr\nlog_type error\n' \
                "$PORT" "$SCRATCH/passwd" >"$SCRATCH/mosquitto.conf"
            chmod 644 "$SCRATCH/mosquitto.conf"
            "$(mosquitto_bin)" -c "$SCRATCH/mosquitto.conf" >"$SCRATCH/$name.log" 2>&1 &
            ;;
    esac
    BROKER=$!
    wait_port "$PORT" 20
    echo "$name first:     $(run_round "$name" first)"
    echo "$name reconnect: $(run_round "$name" again)"
    stop_pid "$BROKER"
    BROKER=
done
