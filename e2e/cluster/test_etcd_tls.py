"""Etcd endpoints with TLS (and client-certificate authentication).

A private CA, server and client certificates are made with openssl for this test; etcd serves
https only and demands a client certificate. A node with the CA, certificate and key joins (its
record appears under nodes/); a node without a client certificate is refused by etcd and never
registers.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cluster_helpers import ETCD_BIN, ETCDCTL_BIN, stable_port
from helpers import HOST, starling_bin, wait_for
from pki import Pki

pytestmark = pytest.mark.security


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    Pki(d).ca("ca").issue("server", "ca").issue("client", "ca")
    return d


class Proc:
    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(10)
        self.f.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def test_node_joins_over_tls_with_client_certificate(pki: Path, tmp_path: Path, procs):
    port = stable_port()
    url = f"https://{HOST}:{port}"
    procs.append(Proc([ETCD_BIN, "--name", "tls", "--data-dir", str(tmp_path / "etcd"),
                       "--listen-client-urls", url, "--advertise-client-urls", url,
                       "--listen-peer-urls", f"http://{HOST}:{stable_port()}",
                       "--cert-file", str(pki / "server.pem"), "--key-file", str(pki / "server-key.pem"),
                       "--trusted-ca-file", str(pki / "ca.pem"), "--client-cert-auth"],
                      tmp_path / "etcd.log"))
    ctl = [ETCDCTL_BIN, "--endpoints", url, "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
           "--key", str(pki / "client-key.pem")]
    env = {**os.environ, "ETCDCTL_API": "3"}

    def keys() -> list[str]:
        r = subprocess.run([*ctl, "get", "--prefix", "/starling/tls/", "--keys-only"], capture_output=True,
                           timeout=10, env=env)
        return [k for k in r.stdout.decode().splitlines() if k]

    wait_for(lambda: subprocess.run([*ctl, "endpoint", "health"], capture_output=True, timeout=10,
                                    env=env).returncode == 0, 15, 0.1, "etcd over TLS to be healthy")

    def node(name: str, *tls: str) -> Proc:
        return Proc([str(starling_bin()), "--node-id", name, "--cluster", "tls", "--etcd", url, *tls,
                     "--listen", f"{HOST}:{stable_port()}", "--peer-listen", f"{HOST}:{stable_port()}",
                     "--lease-ttl-secs", "2"], tmp_path / f"{name}.log")

    procs.append(node("good", "--etcd-ca-file", str(pki / "ca.pem"), "--etcd-cert-file", str(pki / "client.pem"),
                      "--etcd-key-file", str(pki / "client-key.pem")))
    procs.append(node("nocert", "--etcd-ca-file", str(pki / "ca.pem")))
    wait_for(lambda: "/starling/tls/nodes/good" in keys(), 15, 0.1, "the TLS node's record")
    # The node without a client certificate had as long as the good one and more: etcd refused it.
    assert "/starling/tls/nodes/nocert" not in keys(), keys()
    assert b"cannot" in (tmp_path / "nocert.log").read_bytes() or procs[-1].p.poll() is not None
