"""Peers authenticate each other with mutual TLS (`peer_tls_cert_file`,
`peer_tls_key_file`, `peer_tls_ca_file`): the peer port speaks only TLS and only to callers whose
certificate the peer CA signed, and a node checks the certificate of the node it calls.

What is checked: a cluster with peer TLS and no token forwards QoS 1 across nodes, moves a session
from one node to another (takeover: unary peer calls) and answers the client directory; raw gRPC
calls to the peer port in cleartext, over TLS without a client certificate, and over TLS with a
certificate of another CA are refused, while the same call with a certificate of the peer CA
succeeds (positive control); a node whose certificate another CA signed gets no link to the
others, both ways; a certificate replaced on disk is served to new connections without a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

import grpc_raw
from grpc_raw import status_node
from cluster_helpers import await_delivery, wait_owner
from helpers import pprops, starling_bin, wait_for
from pki import Pki

pytestmark = pytest.mark.security


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """CA "peer-ca" with "peer" (SAN 127.0.0.1) and "peer-renewed"; CA "other-ca" with
    "stranger" (SAN 127.0.0.1); "named" (SAN DNS:peers.starling.test) of peer-ca."""
    p = Pki(tmp_path / "pki")
    p.ca("peer-ca").issue("peer", "peer-ca").issue("peer-renewed", "peer-ca")
    p.ca("other-ca").issue("stranger", "other-ca")
    p.issue("named", "peer-ca", "DNS:peers.starling.test")
    return p


def tls_args(pki: Pki, cert: str = "peer", ca: str = "peer-ca", *extra: str) -> list[str]:
    return ["--peer-tls-cert-file", str(pki.cert(cert)), "--peer-tls-key-file", str(pki.key(cert)),
            "--peer-tls-ca-file", str(pki.cert(ca)), *extra]


def client_context(pki: Pki, cert: str | None, ca: str = "peer-ca") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.cert(ca))
    if cert:
        ctx.load_cert_chain(pki.cert(cert), pki.key(cert))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _persistent():
    return pprops("CONNECT", SessionExpiryInterval=300)


def test_cluster_works_over_mutual_tls(cluster, paho, pki):
    """with mTLS alone (no token): a QoS 1 message published on n1 reaches a
    subscriber on n2 (Forward stream); a persistent session on n2 is taken over from n3 with its
    subscription (unary takeover and directory calls); the directory names the new owner."""
    c = cluster(3, peer_token=None, extra_args=tls_args(pki))
    n1, n2, n3 = c
    sub = paho(n2, "tls-sub", clean=False, props=_persistent())
    sub.subscribe("tls/t", 1)
    pub = paho(n1, "tls-pub")
    await_delivery(pub, sub, "tls/t")
    assert pub.publish("tls/t", b"over-tls", qos=1) < 0x80
    assert sub.get().payload == b"over-tls"

    wait_owner(n1, "tls-sub", "n2")
    sub.disconnect()
    moved = paho(n3, "tls-sub", clean=False, props=_persistent())
    assert moved.session_present is True, "the session did not move from n2 to n3 over TLS"
    wait_owner(n1, "tls-sub", "n3")
    await_delivery(pub, moved, "tls/t")
    for node in c:
        assert "peer TLS handshake refused" not in node.log_text(), node.node_id


def test_peer_port_refuses_callers_without_a_peer_certificate(cluster, pki):
    """`Peer/Status` on a TLS peer port is refused in cleartext, over TLS without
    a client certificate and over TLS with a certificate of another CA (no response message);
    the node logs each refused handshake with the caller's address. With a certificate of the
    peer CA the same call returns n1's StatusResponse (positive control)."""
    c = cluster(1, peer_token=None, extra_args=tls_args(pki))
    n1 = c[0]
    calls = {
        "cleartext": None,
        "TLS, no client certificate": client_context(pki, None),
        "TLS, certificate of another CA": client_context(pki, "stranger"),
    }
    for name, ctx in calls.items():
        res = grpc_raw.call(n1.host, n1.peer_port, "Status", b"", tls=ctx)
        print(f"{name}: grpc-status {res.grpc_status} closed {res.closed!r} messages {len(res.messages())}")
        assert res.connected, f"{name}: could not even connect: {res.closed}"
        assert not res.ok and not res.messages(), f"{name}: Status answered: {res}"
    good = grpc_raw.call(n1.host, n1.peer_port, "Status", b"", tls=client_context(pki, "peer"))
    assert good.ok, f"positive control: Status with the peer certificate failed: {good}"
    assert status_node(good) == "n1"
    wait_for(lambda: n1.log_text().count("peer TLS handshake refused") >= 3, 5, 0.05,
             "n1 to log the three refused handshakes")


def test_node_of_another_ca_gets_no_link(cluster, paho, pki):
    """N2 holds a certificate of another CA (and trusts only that CA). It joins
    the membership through etcd, but neither node accepts the other on the peer port: n1 logs
    n2's refused handshake and its own failed link (unknown issuer), and a message published on
    n1 for a subscriber on n2 is not delivered while n1's own subscriber gets it."""
    c = cluster(1, peer_token=None, extra_args=tls_args(pki))
    n1 = c[0]
    n2 = c.add_node(extra_args=tls_args(pki, "stranger", "other-ca"), lease_ttl=n1.opts["lease_ttl"])
    c.start()
    wait_for(lambda: "peer TLS handshake refused" in n1.log_text(), 15, 0.05,
             "n1 to refuse n2's handshake")
    wait_for(lambda: "UnknownIssuer" in n1.log_text(), 15, 0.05,
             "n1's link to n2 to fail on n2's certificate (unknown issuer)")
    local = paho(n1, "local")
    local.subscribe("tls/x", 1)
    remote = paho(n2, "remote")
    remote.subscribe("tls/x", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, local, "tls/x")
    pub.publish("tls/x", b"not-for-strangers", qos=0)
    assert local.get().payload == b"not-for-strangers"
    assert remote.collect_quiet(1.0) == [], "a node of another CA received a forwarded message"


def test_renewed_certificate_is_served_without_restart(cluster, paho, pki, tmp_path):
    """A certificate renewed in place (as cert-manager rewrites a mounted Secret) is what the peer
    port presents to new connections within `peer_tls_reload_secs`, the node keeps running, and
    forwarding to it keeps working. A half-written update (new certificate, old key) is refused
    and reported once, and the loaded certificate stays in use until the key follows."""
    own = tmp_path / "n1-tls"
    own.mkdir()
    shutil.copy(pki.cert("peer"), own / "tls.crt")
    shutil.copy(pki.key("peer"), own / "tls.key")
    n1_args = ["--peer-tls-cert-file", str(own / "tls.crt"), "--peer-tls-key-file", str(own / "tls.key"),
               "--peer-tls-ca-file", str(pki.cert("peer-ca")), "--peer-tls-reload-secs", "1"]
    c = cluster(1, peer_token=None, extra_args=n1_args, start=False)
    c.add_node(extra_args=tls_args(pki), lease_ttl=c[0].opts["lease_ttl"])
    c.start()
    n1, n2 = c

    def presented() -> bytes:
        ctx = client_context(pki, "peer")
        with socket.create_connection((n1.host, n1.peer_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=n1.host) as tls:
                return tls.getpeercert(binary_form=True)

    def der(name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(pki.cert(name).read_text())

    def replace(src: Path, dst: Path) -> None:
        """By a rename, as a Secret volume update does."""
        shutil.copy(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)

    assert presented() == der("peer")
    # Half an update: the new certificate with the old key does not make an identity; the node
    # says so once and keeps presenting the old certificate.
    replace(pki.cert("peer-renewed"), own / "tls.crt")
    wait_for(lambda: "not usable" in n1.log_text(), 10, 0.1, "n1 to refuse the mismatched pair")
    assert presented() == der("peer")
    replace(pki.key("peer-renewed"), own / "tls.key")
    wait_for(lambda: presented() == der("peer-renewed"), 10, 0.2, "n1 to present the renewed certificate")
    assert n1.log_text().count("not usable") == 1, "a refused update is reported once, not every round"
    assert n1.alive()
    sub = paho(n1, "renewed-sub")
    sub.subscribe("tls/r", 1)
    pub = paho(n2, "renewed-pub")
    await_delivery(pub, sub, "tls/r")


def test_shared_server_name(cluster, paho, pki):
    """`peer_tls_server_name`: every node's certificate carries one DNS name
    (peers.starling.test) and not its address; with the option set the nodes check that name and
    link up (a QoS 1 message crosses from n1 to n2)."""
    c = cluster(2, peer_token=None,
                extra_args=tls_args(pki, "named", "peer-ca", "--peer-tls-server-name", "peers.starling.test"))
    n1, n2 = c
    sub = paho(n2, "named-sub")
    sub.subscribe("tls/n", 1)
    pub = paho(n1, "named-pub")
    await_delivery(pub, sub, "tls/n")
    assert pub.publish("tls/n", b"named", qos=1) < 0x80
    assert sub.get().payload == b"named"


def test_unreadable_certificate_stops_the_start(etcd, pki, tmp_path):
    """A peer certificate file that is missing, or holds no certificate, stops the node at start
    (before it registers) with a message naming the configuration key, and exit code 1."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for cert, expected in ((tmp_path / "missing.pem", "cannot read peer_tls_cert_file"),
                           (garbage, "peer_tls_cert_file")):
        r = subprocess.run([str(starling_bin()), "--node-id", "bad", "--cluster", "bad-tls",
                            "--etcd", etcd.node_url, "--listen", "127.0.0.1:0",
                            "--peer-listen", "127.0.0.1:0",
                            "--peer-tls-cert-file", str(cert), "--peer-tls-key-file", str(pki.key("peer")),
                            "--peer-tls-ca-file", str(pki.cert("peer-ca"))],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 1, (r.returncode, r.stderr[-500:])
        assert expected in r.stderr, r.stderr[-500:]
