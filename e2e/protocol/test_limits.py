"""Server limits (MQTT 5.0 §3.2.2.3 CONNACK properties, §4.13 error handling, §3.9.3 SUBACK
reason codes; MQTT 3.1.1 §3.2.2.3 return codes)."""

from __future__ import annotations

import time

import pytest

import rawmqtt as r
from helpers import QUIET, TIMEOUT

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def connect_with_retry(raw, broker, client_id, version=V5, timeout=TIMEOUT):
    """Connect, retrying while the server may still be releasing the slot of a connection that
    just closed (e.g. the fixture's readiness probe). Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        c = raw(broker, version)
        try:
            ack = c.connect(client_id, expect_success=False)
            if ack.reason == 0:
                return c
        except (r.Closed, TimeoutError, AssertionError):
            pass
        c.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{client_id} could not connect within {timeout}s")
        time.sleep(0.05)


def refused(c: r.RawClient, client_id: str, version: int) -> str:
    """Attempt a CONNECT and describe how it was refused; fail if it was accepted."""
    try:
        c.send(r.connect(client_id, version=version))
        pkts = c.recv_until_closed(TIMEOUT)
    except r.Closed:
        return "closed"
    acks = [p for p in pkts if p.ptype == r.CONNACK]
    assert not any(a.reason == 0 for a in acks), f"connection over the limit accepted: {pkts}"
    return f"refused {pkts}"


@both_versions
def test_max_connections(broker_factory, raw, version):
    """MQTT 5.0 §3.2.2.2 (0x97 Quota exceeded / 0x9F Connection rate exceeded / 0x89 Server busy)
    and MQTT 3.1.1 §3.2.2.3 (0x03 Server unavailable): with --max-connections 5 the 6th connection
    does not get a successful CONNACK (refused or closed) while the first 5 keep working; after
    one closes a new client can connect."""
    b = broker_factory(max_connections=5)
    conns = [connect_with_retry(raw, b, f"c{i}", version) for i in range(5)]
    try:
        extra = raw(b, version)
    except OSError:
        extra = None  # refused at TCP level: also fine
    if extra is not None:
        how = refused(extra, "c5", version)
        assert how
    for c in conns:
        c.ping()
    conns[0].disconnect()
    late = connect_with_retry(raw, b, "late", version)
    late.ping()


def test_connack_maximum_packet_size_announced(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.6: CONNACK Maximum Packet Size equals --max-packet-size."""
    b = broker_factory(max_packet_size=1024)
    c = raw(b, V5)
    ack = c.connect("mps")
    assert ack.props.get("MaximumPacketSize") == 1024, ack


def test_packet_over_server_maximum_packet_size_v5(broker_factory, raw, paho):
    """MQTT 5.0 §3.1.2.11.4 / §3.2.2.3.6 and §4.13: a PUBLISH of 2000 bytes to a server with
    Maximum Packet Size 1024 -> DISCONNECT 0x95 Packet too large, then close; a PUBLISH under the
    limit is accepted and delivered."""
    b = broker_factory(max_packet_size=1024)
    sub = paho(b, "sub", version=V5)
    sub.subscribe("big/t", 1)
    c = raw(b, V5)
    c.connect("big")
    c.publish("big/t", b"o" * 900, 1, pid=1)
    assert c.expect(r.PUBACK).pid == 1
    assert sub.get().payload == b"o" * 900
    c.publish("big/t", b"x" * 2000, 1, pid=2)
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_PACKET_TOO_LARGE, pkts
    assert not any(p.ptype == r.PUBACK for p in pkts)
    sub.publish("big/t", b"sentinel", qos=1)
    assert sub.until(b"sentinel") == []


def test_packet_over_server_maximum_packet_size_v311(broker_factory, raw, paho):
    """MQTT 3.1.1 §4.8 / MQTT 5.0 §3.2.2.3.6: a 3.1.1 client sending a packet over the server's
    maximum packet size is disconnected (without a DISCONNECT packet); the message is not
    delivered."""
    b = broker_factory(max_packet_size=1024)
    sub = paho(b, "sub", version=V311)
    sub.subscribe("big/t", 1)
    c = raw(b, V311)
    c.connect("big311")
    c.publish("big/t", b"x" * 2000, 1, pid=2)
    pkts = c.recv_until_closed(TIMEOUT)
    assert pkts == [], pkts
    sub.publish("big/t", b"sentinel", qos=1)
    assert sub.until(b"sentinel") == []


def test_oversized_remaining_length_rejected_before_body(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.6 / §4.13: the Server can reject a packet from its fixed header alone:
    announcing 1,000,000 bytes with a 1024-byte maximum -> DISCONNECT 0x95 and close without the
    client sending the body."""
    b = broker_factory(max_packet_size=1024)
    c = raw(b, V5)
    c.connect("hdr")
    c.send(r.fixed_header(r.PUBLISH, 0, 1_000_000) + r.utf8("big/t"))
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) in (None, r.RC_PACKET_TOO_LARGE), pkts


def test_server_outbound_window_is_max_inflight(broker_factory, raw, paho):
    """MQTT 5.0 §4.9 flow control / MQTT 3.1.1 §4.4 (server-side in-flight limit): with
    --max-inflight 3, a 3.1.1 client that does not acknowledge gets exactly 3 QoS 1 PUBLISHes
    until it acknowledges one."""
    b = broker_factory(max_inflight=3)
    c = raw(b, V311)
    c.connect("window")
    c.subscribe(1, [("w/t", 1)])
    pub = paho(b, "pub", version=V5)
    infos = [pub.publish("w/t", f"m{i}".encode(), qos=1, wait=False) for i in range(10)]
    for info in infos:
        pub.wait_published(info)
    got = [c.expect(r.PUBLISH) for _ in range(3)]
    with pytest.raises(TimeoutError):
        extra = c.recv(QUIET)
        pytest.fail(f"4th PUBLISH with 3 unacknowledged: {extra!r}")
    for p in got:
        c.puback(p.pid)
    while len(got) < 10:
        p = c.expect(r.PUBLISH)
        got.append(p)
        c.puback(p.pid)
    assert [p.payload for p in got] == [f"m{i}".encode() for i in range(10)]


# --- Starling-only limits (no Mosquitto equivalent) ---------------------------------------------

def _over_limit_publish_rejected(c: r.RawClient, topic: str, pid: int) -> None:
    """A QoS 1 PUBLISH the server must refuse: PUBACK 0x90 (connection kept) or DISCONNECT 0x90
    (connection closed) are both accepted (MQTT 5.0 §3.4.2.1 / §4.13)."""
    c.publish(topic, b"x", 1, pid=pid)
    try:
        p = c.recv(TIMEOUT)
    except r.Closed:
        raise AssertionError("closed without PUBACK/DISCONNECT 0x90") from None
    if p.ptype == r.PUBACK:
        assert p.pid == pid and p.reason == r.RC_TOPIC_NAME_INVALID, p
        c.ping()
    else:
        assert p.ptype == r.DISCONNECT and p.reason == r.RC_TOPIC_NAME_INVALID, p
        c.recv_until_closed(TIMEOUT)


@pytest.mark.starling_only(reason="--max-topic-length has no Mosquitto equivalent")
def test_max_topic_length(broker_factory, raw, paho):
    """MQTT 5.0 §3.9.3 / §3.4.2.1 / §4.13 with --max-topic-length 32: SUBSCRIBE to a longer
    filter -> SUBACK failure (>= 0x80); PUBLISH to a longer topic -> PUBACK or DISCONNECT 0x90
    Topic Name invalid; names at the limit work."""
    b = broker_factory(max_topic_length=32)
    ok_topic = "t/" + "a" * 30
    long_topic = "t/" + "a" * 40
    c = raw(b, V5)
    c.connect("tl")
    sa = c.subscribe(1, [(ok_topic, 1), (long_topic, 1)])
    assert sa.reasons[0] == 1 and sa.reasons[1] >= 0x80, sa
    c.publish(ok_topic, b"ok", 1, pid=2)
    seen = [c.recv(TIMEOUT), c.recv(TIMEOUT)]
    assert sorted(p.ptype for p in seen) == [r.PUBLISH, r.PUBACK], seen
    _over_limit_publish_rejected(c, long_topic, 3)


@pytest.mark.starling_only(reason="v3.1.1 SUBACK failure code 0x80 for --max-topic-length")
def test_max_topic_length_v311_suback_failure(broker_factory, raw):
    """MQTT 3.1.1 §3.9.3: a filter over --max-topic-length -> SUBACK return code 0x80 Failure."""
    b = broker_factory(max_topic_length=32)
    c = raw(b, V311)
    c.connect("tl311")
    sa = c.subscribe(1, [("t/" + "a" * 40, 1)])
    assert sa.reasons == [0x80]


@pytest.mark.starling_only(reason="--max-topic-levels has no Mosquitto equivalent")
def test_max_topic_levels(broker_factory, raw):
    """MQTT 5.0 §3.9.3 / §3.4.2.1 / §4.13 with --max-topic-levels 4: SUBSCRIBE to a 5-level
    filter -> SUBACK failure; PUBLISH to a 5-level topic -> PUBACK or DISCONNECT 0x90; 4 levels
    work."""
    b = broker_factory(max_topic_levels=4)
    c = raw(b, V5)
    c.connect("lv")
    sa = c.subscribe(1, [("a/b/c/d", 1), ("a/b/c/d/e", 1), ("a/+/+/+/#", 1)])
    assert sa.reasons[0] == 1 and sa.reasons[1] >= 0x80 and sa.reasons[2] >= 0x80, sa
    c.publish("a/b/c/d", b"ok", 1, pid=2)
    seen = [c.recv(TIMEOUT), c.recv(TIMEOUT)]
    assert sorted(p.ptype for p in seen) == [r.PUBLISH, r.PUBACK], seen
    _over_limit_publish_rejected(c, "a/b/c/d/e", 3)


@pytest.mark.starling_only(reason="--max-subscriptions-per-client has no Mosquitto equivalent")
@both_versions
def test_max_subscriptions_per_client(broker_factory, raw, version):
    """MQTT 5.0 §3.9.3 0x97 Quota exceeded / MQTT 3.1.1 §3.9.3 0x80 Failure: with
    --max-subscriptions-per-client 3 the 4th distinct filter is refused; re-subscribing to an
    existing filter (a replacement, MQTT-3.8.4-3) is still allowed; after an UNSUBSCRIBE a new
    filter fits again."""
    b = broker_factory(max_subscriptions_per_client=3)
    c = raw(b, version)
    c.connect("subs")
    assert c.subscribe(1, [("s/1", 1), ("s/2", 1), ("s/3", 1)]).reasons == [1, 1, 1]
    expected_fail = r.RC_QUOTA_EXCEEDED if version == V5 else 0x80
    assert c.subscribe(2, [("s/4", 1)]).reasons == [expected_fail]
    assert c.subscribe(3, [("s/2", 0)]).reasons == [0]
    c.unsubscribe(4, ["s/1"])
    assert c.subscribe(5, [("s/4", 1)]).reasons == [1]


@pytest.mark.starling_only(reason="--max-awaiting-rel has no Mosquitto equivalent")
def test_max_awaiting_rel(broker_factory, raw):
    """MQTT 5.0 §3.5.2.1 (PUBREC 0x97 Quota exceeded) / §3.3.4 (0x93): with --max-awaiting-rel 2
    a third incoming QoS 2 message awaiting PUBREL is refused, either by PUBREC with a failure
    reason (>= 0x80) or by a DISCONNECT (>= 0x80) and close. Completing a flow frees a slot."""
    b = broker_factory(max_awaiting_rel=2)
    c = raw(b, V5)
    c.connect("rel")
    for pid in (1, 2):
        c.publish("rel/t", b"x", 2, pid=pid)
        rec = c.expect(r.PUBREC)
        assert rec.pid == pid and rec.reason < 0x80
    c.publish("rel/t", b"x", 2, pid=3)
    try:
        p = c.recv(TIMEOUT)
    except r.Closed:
        raise AssertionError("closed without PUBREC/DISCONNECT") from None
    if p.ptype == r.PUBREC:
        assert p.pid == 3 and p.reason >= 0x80, p
        c.pubrel(1)
        assert c.expect(r.PUBCOMP).pid == 1
        c.publish("rel/t", b"x", 2, pid=4)
        rec = c.expect(r.PUBREC)
        assert rec.pid == 4 and rec.reason < 0x80, rec
    else:
        assert p.ptype == r.DISCONNECT and p.reason >= 0x80, p
        c.recv_until_closed(TIMEOUT)
