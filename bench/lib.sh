# Shared by bench/compare.sh and bench/smoke.sh: building the binaries,
# installing Mosquitto, starting and stopping a broker on a free loopback
# port. Source it; it defines functions and sets no traps.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_BIN="$BENCH_ROOT/target/release/starling-bench"
STARLING_BIN="$BENCH_ROOT/target/release/starling"
# Limits both brokers get, so that neither drops nor throttles what the
# scenarios send (see docs/performance.md).
BROKER_MAX_INFLIGHT=64
BROKER_MAX_QUEUED=1000000

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

ensure_bench() {
    if [[ ! -x "$BENCH_BIN" || -n "${BENCH_REBUILD:-}" ]]; then
        log "building starling-bench"
        (cd "$BENCH_ROOT" && cargo build --release -p starling-bench) >&2
    fi
}

ensure_starling() {
    if [[ ! -x "$STARLING_BIN" || -n "${BENCH_REBUILD:-}" ]]; then
        log "building starling"
        (cd "$BENCH_ROOT" && cargo build --release --bin starling) >&2
    fi
}

ensure_mosquitto() {
    if command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then
        return 0
    fi
    log "installing mosquitto"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends mosquitto >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends mosquitto >&2
    fi
    # The package may start a system service on 1883; we start our own.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl stop mosquitto >/dev/null 2>&1 || true
    fi
}

mosquitto_bin() {
    command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# start_broker NAME PORT DIR: starts starling or mosquitto listening on
# 127.0.0.1:PORT with the shared limits; sets BROKER_PID. Logs go to
# DIR/NAME.log.
start_broker() {
    local name=$1 port=$2 dir=$3
    case "$name" in
        starling)
            "$STARLING_BIN" --listen "127.0.0.1:$port" \
                --max-inflight "$BROKER_MAX_INFLIGHT" \
                --max-queued-messages "$BROKER_MAX_QUEUED" \
                --max-connections 1000000 \
                --log-level warn >"$dir/$name.log" 2>&1 &
            BROKER_PID=$!
            ;;
        mosquitto)
            # Mosquitto started as root drops to the mosquitto user, which
            # must be able to read its configuration.
            chmod 755 "$dir"
            cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages $BROKER_MAX_QUEUED
max_inflight_messages $BROKER_MAX_INFLIGHT
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
            chmod 644 "$dir/mosquitto.conf"
            "$(mosquitto_bin)" -c "$dir/mosquitto.conf" >"$dir/$name.log" 2>&1 &
            BROKER_PID=$!
            ;;
        *)
            log "unknown broker $name"
            return 2
            ;;
    esac
    if ! wait_port "$port" 10; then
        log "$name did not start; its log:"
        tail -20 "$dir/$name.log" >&2
        stop_broker
        return 1
    fi
}

# stop_broker: SIGTERM, then SIGKILL after 5 s, the broker started last.
stop_broker() {
    local pid=${BROKER_PID:-}
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    BROKER_PID=
}

# Waits (up to $1 seconds) until no build, fuzzing or test run (cargo,
# rustc, cargo-fuzz, pytest) is going on, so that it does not share the CPU
# with a measurement. Returns 1 if one still runs.
wait_no_build() {
    local deadline=$((SECONDS + $1))
    # Matched on the executable at the start of the command line: other
    # processes may mention .cargo/bin in their arguments.
    while pgrep -f '^(\S*/)?(cargo|rustc|cargo-fuzz|cargo-clippy|clippy-driver|cargo-nextest)( |$)' >/dev/null 2>&1 ||
        pgrep -f '^(\S*/)?python3?(\.[0-9]+)? -m pytest' >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 5
    done
    return 0
}
