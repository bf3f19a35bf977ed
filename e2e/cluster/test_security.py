"""Security: only nodes of the cluster may call a node's peer (gRPC) port; they
present the shared `--peer-token` in the `authorization` metadata (peer.proto header).

What is checked: raw HTTP/2 gRPC calls (the `h2` package) to `Peer/Status` and to the `Forward`
stream without a token and with a wrong token are refused (no OK status, no response message, no
message injected into the broker), while the same calls with the right token succeed -- the
positive control shows that the refusal is the token's doing and not a malformed request. The
token travels in cleartext HTTP/2 here; mutual TLS on the peer port is test_peer_tls.py."""

from __future__ import annotations

import pytest

import grpc_raw
from grpc_raw import status_node

pytestmark = pytest.mark.security

TOKEN_FORMS = ("Bearer {}", "{}")  # which one the broker expects is not fixed by the contract


def _refused(res: grpc_raw.CallResult) -> bool:
    return not res.ok and not res.messages()


def _authorized_call(node, token: str, method: str, request: bytes, **kw):
    """Call with the right token in each plausible form; returns (form, result) of the first
    that succeeds, or (None, last result)."""
    res = None
    for form in TOKEN_FORMS:
        res = grpc_raw.call(node.host, node.peer_port, method, request,
                            metadata={"authorization": form.format(token)}, **kw)
        if res.ok:
            return form, res
    return None, res


def test_peer_status_requires_token(cluster):
    """`Peer/Status` on n1's peer port without an authorization header, and with
    a wrong token, is refused (gRPC status not OK -- ideally 16 UNAUTHENTICATED -- or the
    connection/stream is closed) and returns no StatusResponse; with the cluster's token it
    returns n1's StatusResponse."""
    c = cluster(1)
    n1 = c[0]
    assert c.peer_token
    none = grpc_raw.call(n1.host, n1.peer_port, "Status", b"")
    wrong = grpc_raw.call(n1.host, n1.peer_port, "Status", b"",
                          metadata={"authorization": "Bearer not-the-token"})
    form, good = _authorized_call(n1, c.peer_token, "Status", b"")
    for name, res in (("no token", none), ("wrong token", wrong), ("right token", good)):
        print(f"{name}: http {res.http_status} grpc-status {res.grpc_status} {res.grpc_message!r} "
              f"closed {res.closed!r} messages {len(res.messages())}")
    assert form is not None, ("positive control failed: Status with the right token (as 'Bearer <t>' "
                              f"or '<t>') was not OK: {good}")
    assert status_node(good) == "n1"
    for name, res in (("no token", none), ("wrong token", wrong)):
        assert res.connected, f"{name}: could not even connect to the peer port: {res.closed}"
        assert _refused(res), f"{name}: Status answered without the token: {res}"
        if res.grpc_status is not None and res.grpc_status != 16:
            print(f"note: {name} refused with grpc-status {res.grpc_status}, not 16 UNAUTHENTICATED")


def test_forward_without_token_injects_nothing(cluster, paho):
    """A `Peer/Forward` stream opened without the token carrying a message for
    a topic with a subscriber on n1 is refused and the subscriber gets nothing; the same batch
    with the right token is delivered (positive control: the request itself is well-formed)."""
    c = cluster(1)
    n1 = c[0]
    sub = paho(n1, "victim")
    sub.subscribe("sec/t", 0)
    batch = grpc_raw.forward_batch(1, [grpc_raw.forwarded_message("sec/t", b"injected")])
    res = grpc_raw.call(n1.host, n1.peer_port, "Forward", batch, half_close=False, linger=1.0, timeout=3)
    print(f"no token: http {res.http_status} grpc-status {res.grpc_status} {res.grpc_message!r} "
          f"closed {res.closed!r} acks {len(res.messages())}")
    assert not res.messages(), f"Forward without token was acknowledged: {res}"
    sub.assert_no_message(0.5)

    delivered_with = None
    for form in TOKEN_FORMS:
        batch = grpc_raw.forward_batch(1, [grpc_raw.forwarded_message("sec/t", form.encode())])
        ok = grpc_raw.call(n1.host, n1.peer_port, "Forward", batch, half_close=False, linger=1.0, timeout=3,
                           metadata={"authorization": form.format(c.peer_token)})
        print(f"right token as {form!r}: grpc-status {ok.grpc_status} acks {len(ok.messages())} "
              f"closed {ok.closed!r}")
        try:
            if sub.get(2).payload == form.encode():
                delivered_with = form
                break
        except AssertionError:
            continue
    assert delivered_with, "positive control: a Forward batch with the right token was not delivered"
