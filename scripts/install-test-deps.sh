#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian packages
# (MQTT client tools, protoc) and the Python packages of e2e/protocol.
# Safe to run repeatedly: it only installs what is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

missing_debs=()
command -v mosquitto_pub >/dev/null || missing_debs+=(mosquitto-clients)
command -v protoc >/dev/null || missing_debs+=(protobuf-compiler)
command -v python3 >/dev/null || missing_debs+=(python3 python3-pip)
# Cluster tests: a real etcd (server and etcdctl) from Debian.
command -v etcd >/dev/null || missing_debs+=(etcd-server)
command -v etcdctl >/dev/null || missing_debs+=(etcd-client)
# TLS tests (peer mTLS, etcd over TLS) make their certificates with it.
command -v openssl >/dev/null || missing_debs+=(openssl)
# Benchmark smoke runs compare against Mosquitto's broker.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing_debs+=(mosquitto)
if [ ${#missing_debs[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing_debs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
fi

if ! python3 -c 'import paho.mqtt, pytest, pytest_timeout, h2' 2>/dev/null; then
    echo "installing Python packages from e2e/cluster/requirements.txt"
    # Debian's own python3 refuses plain pip installs (PEP 668); the test
    # packages are harmless there, so allow it explicitly on that system.
    (cd e2e/cluster && python3 -m pip install -q -r requirements.txt 2>/dev/null) ||
        (cd e2e/cluster && python3 -m pip install -q --break-system-packages -r requirements.txt)
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
