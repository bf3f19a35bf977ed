# Shared by the bench scripts: building the binaries, installing Mosquitto
# and etcd, starting and stopping a broker on a free loopback port. Source
# it; it defines functions and sets no traps (but start_scratch_cluster).

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

ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
# Nodes of the `cluster` broker.
CLUSTER_NODES=${BENCH_CLUSTER_NODES:-3}

ensure_etcd() {
    if [[ -x "$ETCD_BIN" ]]; then
        return 0
    fi
    log "installing etcd-server"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends etcd-server >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends etcd-server >&2
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl stop etcd >/dev/null 2>&1 || true
    fi
}

# starling_limits: the flags that give Starling the shared limits.
starling_limits() {
    echo --max-inflight "$BROKER_MAX_INFLIGHT" --max-queued-messages "$BROKER_MAX_QUEUED" \
        --max-connections 1000000 --log-level warn
}

# start_cluster PORT DIR: one etcd and CLUSTER_NODES Starling nodes on
# loopback; node 1 listens on PORT. Sets BROKER_PID (node 1),
# BROKER_SUB_PORT (node 2: where scenarios put subscribers), BROKER_PORTS,
# BROKER_NODE_PIDS and BROKER_ADMIN_PORTS (every node), and waits until
# every node sees every other. Nodes run with route_sync on, so that a subscription is reachable
# from every node when its SUBACK arrives, as on a single node.
start_cluster() {
    local port=$1 dir=$2 client_port peer_port i node_port
    client_port=$(free_port)
    peer_port=$(free_port)
    "$ETCD_BIN" --name bench --data-dir "$dir/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$client_port" \
        --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "bench=http://127.0.0.1:$peer_port" \
        --log-level warn --logger zap >"$dir/etcd.log" 2>&1 &
    ETCD_PID=$!
    if ! wait_port "$client_port" 15; then
        log "etcd did not start; its log:"
        tail -20 "$dir/etcd.log" >&2
        return 1
    fi
    BROKER_PORTS=
    BROKER_NODE_PIDS=
    BROKER_ADMIN_PORTS=()
    # The admin API's calls that change state (drain) need it.
    BENCH_ADMIN_TOKEN=bench-admin-token-0123
    export BENCH_ADMIN_TOKEN
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        if ((i == 1)); then node_port=$port; else node_port=$(free_port); fi
        local node_peer node_admin
        node_peer=$(free_port)
        node_admin=$(free_port)
        # shellcheck disable=SC2046
        "$STARLING_BIN" --node-id "n$i" --cluster bench --etcd "http://127.0.0.1:$client_port" \
            --listen "127.0.0.1:$node_port" --peer-listen "127.0.0.1:$node_peer" \
            --admin-listen "127.0.0.1:$node_admin" --peer-token bench-token \
            --admin-token "$BENCH_ADMIN_TOKEN" \
            --route-sync "${BENCH_ROUTE_SYNC:-true}" $(starling_limits) ${BENCH_NODE_ARGS:-} \
            >"$dir/starling-n$i.log" 2>&1 &
        BROKER_NODE_PIDS+="${BROKER_NODE_PIDS:+ }$!"
        BROKER_PORTS+="${BROKER_PORTS:+,}$node_port"
        BROKER_ADMIN_PORTS+=("$node_admin")
        ((i == 1)) && BROKER_PID=$!
        ((i == 2)) && BROKER_SUB_PORT=$node_port
    done
    ((CLUSTER_NODES >= 2)) || BROKER_SUB_PORT=$port
    # Every node up, and aware of every other (peers = nodes - 1).
    if ! python3 - "$((CLUSTER_NODES - 1))" "${BROKER_ADMIN_PORTS[@]}" <<'PY'; then
import json, sys, time, urllib.request
peers, ports = int(sys.argv[1]), sys.argv[2:]
deadline = time.monotonic() + 30
pending = set(ports)
while pending and time.monotonic() < deadline:
    for port in list(pending):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/node", timeout=1) as r:
                if json.load(r).get("peers") == peers:
                    pending.discard(port)
        except OSError:
            pass
    time.sleep(0.05)
sys.exit(1 if pending else 0)
PY
        log "the cluster did not form within 30 s; node logs:"
        tail -n 5 "$dir"/starling-n*.log >&2
        return 1
    fi
}

# start_scratch_cluster: for a script measuring one cluster: builds and
# installs what is missing, starts `cluster` in a new directory $SCRATCH,
# and on exit stops it, kills $CLIENT_PID (a load client, when set) and
# removes $SCRATCH.
start_scratch_cluster() {
    ensure_bench
    ensure_starling
    ensure_etcd
    SCRATCH=$(mktemp -d)
    CLIENT_PID=
    trap scratch_cluster_cleanup EXIT
    trap 'exit 143' TERM INT
    start_broker cluster "$(free_port)" "$SCRATCH"
}

scratch_cluster_cleanup() {
    [[ -z "${CLIENT_PID:-}" ]] || kill "$CLIENT_PID" 2>/dev/null || true
    stop_broker
    rm -rf "$SCRATCH"
}

# start_broker NAME PORT DIR: starts starling, mosquitto, or a Starling
# cluster (`cluster`, see start_cluster) listening on 127.0.0.1:PORT with
# the shared limits; sets BROKER_PID, and BROKER_SUB_PORT, BROKER_PORTS and
# BROKER_NODE_PIDS (for a single broker: its port and PID). Logs go to
# DIR/NAME.log.
start_broker() {
    local name=$1 port=$2 dir=$3
    BROKER_SUB_PORT=$port
    BROKER_PORTS=$port
    case "$name" in
        cluster)
            if ! start_cluster "$port" "$dir"; then
                stop_broker
                return 1
            fi
            return 0
            ;;
        starling | baseline)
            # `baseline` is another Starling build (STARLING_BASELINE_BIN),
            # for before/after tables of a change.
            local bin=$STARLING_BIN
            [[ "$name" != baseline ]] || bin=${STARLING_BASELINE_BIN:?set STARLING_BASELINE_BIN to the Starling binary to compare with}
            # shellcheck disable=SC2046
            "$bin" --listen "127.0.0.1:$port" $(starling_limits) \
                >"$dir/$name.log" 2>&1 &
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
    BROKER_NODE_PIDS=$BROKER_PID
    if ! wait_port "$port" 10; then
        log "$name did not start; its log:"
        tail -20 "$dir/$name.log" >&2
        stop_broker
        return 1
    fi
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s.
stop_pid() {
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_broker: stops the broker started last (every node, then etcd, for
# a cluster). A cluster's nodes are killed at once: a SIGTERM would make
# each drain its sessions into the others.
stop_broker() {
    local pid
    if [[ -n "${ETCD_PID:-}" ]]; then
        for pid in ${BROKER_NODE_PIDS:-}; do
            kill -9 "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
        stop_pid "$ETCD_PID"
        ETCD_PID=
    elif [[ -n "${BROKER_PID:-}" ]]; then
        stop_pid "$BROKER_PID"
    fi
    BROKER_PID=
    BROKER_NODE_PIDS=
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
