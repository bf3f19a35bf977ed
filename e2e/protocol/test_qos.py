"""Quality of Service flows (MQTT 3.1.1 §4.3-4.6, MQTT 5.0 §4.3-4.6, §4.9 flow control)."""

from __future__ import annotations

import pytest

import rawmqtt as r
from helpers import QUIET, TIMEOUT

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@both_versions
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivery_qos_is_minimum_of_publish_and_subscription(broker, paho, version, pub_qos, sub_qos):
    """MQTT 3.1.1 §3.8.4 MQTT-3.8.4-6 / MQTT 5.0 §3.8.4 MQTT-3.8.4-8 and §4.3: a message is
    delivered at min(publish QoS, granted QoS); the publisher's flow completes (on_publish after
    PUBACK / PUBCOMP for QoS 1/2)."""
    sub = paho(broker, "sub", version=version)
    assert sub.subscribe("q/t", sub_qos) == [sub_qos]  # SUBACK grants the requested QoS
    pub = paho(broker, "pub", version=version)
    rc = pub.publish("q/t", b"payload", qos=pub_qos)
    assert rc == 0
    m = sub.get()
    assert m.payload == b"payload"
    assert m.qos == min(pub_qos, sub_qos)
    assert m.topic == "q/t"


@both_versions
def test_qos1_puback_carries_packet_identifier(broker, raw, version):
    """MQTT 3.1.1 §4.3.2 MQTT-4.3.2-4 / MQTT 5.0 §4.3.2: the receiver of a QoS 1 PUBLISH responds
    with a PUBACK containing the same Packet Identifier."""
    c = raw(broker, version)
    c.connect("q1")
    c.subscribe(1, [("q1/t", 0)])  # so that v5 reason is 0x00, not 0x10
    for pid in (1, 0x1234, 65535):
        c.publish("q1/t", b"x", 1, pid=pid)
        seen = [c.recv(TIMEOUT), c.recv(TIMEOUT)]
        ack = next(p for p in seen if p.ptype == r.PUBACK)
        assert ack.pid == pid
        assert ack.reason == 0


@both_versions
def test_qos2_publisher_flow(broker, raw, paho, version):
    """MQTT 3.1.1 §4.3.3 MQTT-4.3.3-8, MQTT-4.3.3-9 / MQTT 5.0 §4.3.3: PUBLISH QoS 2 -> PUBREC,
    PUBREL -> PUBCOMP, all with the same Packet Identifier; the message is delivered once."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("q2/t", 2)
    c = raw(broker, version)
    c.connect("q2pub")
    c.publish("q2/t", b"exactly-once", 2, pid=77)
    rec = c.expect(r.PUBREC)
    assert rec.pid == 77 and rec.reason == 0
    c.pubrel(77)
    comp = c.expect(r.PUBCOMP)
    assert comp.pid == 77 and comp.reason == 0
    m = sub.get()
    assert m.payload == b"exactly-once" and m.qos == 2


@both_versions
def test_qos2_subscriber_flow(broker, raw, paho, version):
    """MQTT 3.1.1 §4.3.3 MQTT-4.3.3-1..-3 / MQTT 5.0 §4.3.3: the Server sends PUBLISH QoS 2
    (DUP 0), answers the client's PUBREC with PUBREL (flags 0010) and then considers the flow
    complete when PUBCOMP arrives."""
    c = raw(broker, version)
    c.connect("q2sub")
    c.subscribe(1, [("q2/t", 2)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("q2/t", b"to-raw", qos=2)
    p = c.expect(r.PUBLISH)
    assert p.qos == 2 and not p.dup and p.payload == b"to-raw" and p.pid
    c.pubrec(p.pid)
    rel = c.expect(r.PUBREL)
    assert rel.pid == p.pid and rel.flags == 0x2
    c.pubcomp(p.pid)
    c.ping()  # no more packets for this message
    assert c.is_open_after(QUIET)


@both_versions
def test_qos2_duplicate_publish_before_pubrel_delivered_once(broker, raw, paho, version):
    """MQTT 3.1.1 §4.3.3 MQTT-4.3.3-10 / MQTT 5.0 §4.3.3 MQTT-4.3.3-10, -11: until PUBREL the
    receiver MUST NOT cause duplicate messages to be delivered: a QoS 2 PUBLISH re-sent with the
    same Packet Identifier and DUP=1 is delivered to subscribers once."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("dup/t", 2)
    c = raw(broker, version)
    c.connect("dup-pub")
    c.publish("dup/t", b"once", 2, pid=5)
    assert c.expect(r.PUBREC).pid == 5
    c.publish("dup/t", b"once", 2, pid=5, dup=True)
    assert c.expect(r.PUBREC).pid == 5
    c.pubrel(5)
    assert c.expect(r.PUBCOMP).pid == 5
    c.publish("dup/t", b"sentinel", 2, pid=6)
    c.expect(r.PUBREC)
    c.pubrel(6)
    c.expect(r.PUBCOMP)
    before = sub.until(b"sentinel")
    assert [m.payload for m in before] == [b"once"]


@both_versions
def test_100_qos1_messages_arrive_in_order(broker, paho, version):
    """MQTT 3.1.1 §4.6 MQTT-4.6.0-6 / MQTT 5.0 §4.6 MQTT-4.6.0-6: messages on one (ordered)
    Topic are forwarded in the order they were received from the publisher."""
    sub = paho(broker, "sub", version=version)
    sub.subscribe("order/t", 1)
    pub = paho(broker, "pub", version=version)
    infos = [pub.publish("order/t", str(i).encode(), qos=1, wait=False) for i in range(100)]
    for info in infos:
        pub.wait_published(info)
    msgs = sub.get_n(100)
    assert [int(m.payload) for m in msgs] == list(range(100))


def test_connack_receive_maximum_equals_max_inflight(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.3: CONNACK Receive Maximum is the server's limit on concurrent
    QoS 1/2 PUBLISHes from the client; it equals --max-inflight."""
    b = broker_factory(max_inflight=7)
    c = raw(b, V5)
    ack = c.connect("rm")
    assert ack.props.get("ReceiveMaximum") == 7, ack


def test_connack_receive_maximum_default(broker, raw):
    """MQTT 5.0 §3.2.2.3.3: the default --max-inflight is 32, announced as Receive Maximum
    (absent would mean 65535)."""
    c = raw(broker, V5)
    ack = c.connect("rm-default")
    assert ack.props.get("ReceiveMaximum", 65535) == 32, ack


def _receive_maximum_setup(broker, raw, paho):
    c = raw(broker, V5)
    c.connect("rm2", props={"ReceiveMaximum": 2})
    c.subscribe(1, [("rm/t", 1)])
    pub = paho(broker, "pub", version=V5)
    infos = [pub.publish("rm/t", f"m{i}".encode(), qos=1, wait=False) for i in range(10)]
    for info in infos:  # all 10 are at the broker now
        pub.wait_published(info)
    inflight = [c.expect(r.PUBLISH), c.expect(r.PUBLISH)]
    with pytest.raises(TimeoutError):
        extra = c.recv(QUIET)
        pytest.fail(f"third PUBLISH while 2 unacknowledged: {extra!r}")
    return c, inflight


def test_v5_client_receive_maximum_limits_initial_window(broker, raw, paho):
    """MQTT 5.0 §3.3.4 MQTT-3.3.4-7, MQTT-3.3.4-9 and §4.9 flow control: with client Receive
    Maximum 2 and 10 messages pending, the Server sends exactly 2 QoS 1 PUBLISHes until one is
    acknowledged; acknowledging releases the rest, in order."""
    c, inflight = _receive_maximum_setup(broker, raw, paho)
    received = list(inflight)
    for p in inflight:
        c.puback(p.pid)
    while len(received) < 10:
        p = c.expect(r.PUBLISH)
        received.append(p)
        c.puback(p.pid)
    assert [p.payload for p in received] == [f"m{i}".encode() for i in range(10)]
    assert received[0].pid != received[1].pid  # MQTT-2.2.1-3: distinct while in flight


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 releases two PUBLISHes per PUBACK after the first")
def test_v5_client_receive_maximum_one_release_per_ack(broker, raw, paho):
    """MQTT 5.0 §3.3.4 MQTT-3.3.4-9 and §4.9: with client Receive Maximum 2 the Server never has
    more than 2 unacknowledged QoS 1 PUBLISHes outstanding: each PUBACK releases exactly one."""
    c, inflight = _receive_maximum_setup(broker, raw, paho)
    received = list(inflight)
    while len(received) < 10:
        oldest = inflight.pop(0)
        c.puback(oldest.pid)
        nxt = c.expect(r.PUBLISH)
        inflight.append(nxt)
        received.append(nxt)
        if len(received) < 10:
            with pytest.raises(TimeoutError):
                extra = c.recv(0.2)
                pytest.fail(f"more than one PUBLISH released by one PUBACK: {extra!r}")
    for p in inflight:
        c.puback(p.pid)
    assert [p.payload for p in received] == [f"m{i}".encode() for i in range(10)]
    assert all(p.qos == 1 and p.pid for p in received)


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 answers PUBREC 0x97 instead of DISCONNECT 0x93")
def test_client_exceeding_server_receive_maximum_disconnected_0x93(broker_factory, raw):
    """MQTT 5.0 §3.3.4 MQTT-3.3.4-8 (and §3.2.2.3.3): a client that sends more QoS>0 PUBLISHes
    without completion than the Server's Receive Maximum is disconnected with 0x93 Receive
    Maximum exceeded. --max-inflight 2; three QoS 2 PUBLISHes without PUBREL."""
    b = broker_factory(max_inflight=2)
    c = raw(b, V5)
    ack = c.connect("rmx")
    assert ack.props.get("ReceiveMaximum") == 2
    for pid in (1, 2):
        c.publish("rmx/t", b"x", 2, pid=pid)
        assert c.expect(r.PUBREC).pid == pid
    c.publish("rmx/t", b"x", 2, pid=3)
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_RECEIVE_MAXIMUM_EXCEEDED, pkts


@both_versions
def test_unacked_qos1_redelivered_with_dup_on_reconnect(broker, raw, paho, version):
    """MQTT 3.1.1 §4.4 MQTT-4.4.0-1 and MQTT-3.3.1-1 / MQTT 5.0 §4.4 MQTT-4.4.0-1, MQTT-3.3.1-1:
    on reconnect with a resumed session the Server re-sends unacknowledged QoS 1 PUBLISHes with
    their original Packet Identifiers and DUP=1."""
    props = {"SessionExpiryInterval": 60} if version == V5 else None
    c = raw(broker, version)
    # 3.1.1: the session must be created with CleanSession=0; 5.0: Session Expiry > 0
    c.connect("redeliver", clean=(version == V5), props=props)
    c.subscribe(1, [("rd/t", 1)])
    pub = paho(broker, "pub", version=V5)
    for i in range(3):
        pub.publish("rd/t", f"m{i}".encode(), qos=1)
    first = [c.expect(r.PUBLISH) for _ in range(3)]
    assert not any(p.dup for p in first)
    c.abort()  # network failure without acknowledging
    c2 = raw(broker, version)
    ack = c2.connect("redeliver", clean=False, props=props)
    assert ack.session_present is True
    again = [c2.expect(r.PUBLISH) for _ in range(3)]
    assert [(p.pid, p.payload) for p in again] == [(p.pid, p.payload) for p in first]
    assert all(p.dup for p in again), again
    for p in again:
        c2.puback(p.pid)
    c2.ping()


def _five_in_flight_then_lost(broker, raw, paho, client_id, topic):
    """A v5 client with a 60 s session and Receive Maximum 10 receives five QoS 1 messages on
    ``topic`` and loses its connection without acknowledging them. Returns the CONNECT
    properties, the publisher and the five PUBLISHes as first sent."""
    props = {"SessionExpiryInterval": 60, "ReceiveMaximum": 10}
    c = raw(broker, V5)
    c.connect(client_id, clean=False, props=props)
    c.subscribe(1, [(topic, 1)])
    pub = paho(broker, "pub", version=V5)
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    first = [c.expect(r.PUBLISH) for _ in range(5)]
    c.abort()  # network failure without acknowledging
    return props, pub, first


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 resends every in-flight message, beyond the new Receive Maximum")
def test_resend_on_reconnect_keeps_to_the_new_receive_maximum(broker, raw, paho):
    """MQTT 5.0 §4.4 MQTT-4.4.0-1 with §4.9 MQTT-4.9.0-2: five QoS 1 PUBLISHes are unacknowledged
    when the client reconnects with Receive Maximum 2. The Server resends two (DUP, in order), one
    more per PUBACK, and a message published meanwhile only after all five."""
    props, pub, first = _five_in_flight_then_lost(broker, raw, paho, "rm-shrink", "rms/t")
    c = raw(broker, V5)
    ack = c.connect("rm-shrink", clean=False, props={**props, "ReceiveMaximum": 2})
    assert ack.session_present is True
    inflight = [c.expect(r.PUBLISH) for _ in range(2)]
    pub.publish("rms/t", b"new", qos=1)
    received = list(inflight)
    while len(received) < 6:
        with pytest.raises(TimeoutError):
            extra = c.recv(0.2)
            pytest.fail(f"a PUBLISH beyond Receive Maximum 2: {extra!r}")
        oldest = inflight.pop(0)
        c.puback(oldest.pid)
        nxt = c.expect(r.PUBLISH)
        inflight.append(nxt)
        received.append(nxt)
    for p in inflight:
        c.puback(p.pid)
    resent, new = received[:5], received[5]
    assert [(p.pid, p.payload) for p in resent] == [(p.pid, p.payload) for p in first]
    assert all(p.dup for p in resent), resent
    assert new.payload == b"new" and not new.dup
    c.ping()


def test_resend_after_two_reconnects_sends_each_message_once(broker, raw, paho):
    """MQTT 5.0 §4.4 MQTT-4.4.0-1 and §4.9: a client reconnects with Receive Maximum 1 (four of
    five unacknowledged messages left waiting for room), drops again at once, and comes back with
    Receive Maximum 2: each message is resent exactly once, in order, two at a time."""
    props, _pub, first = _five_in_flight_then_lost(broker, raw, paho, "twice-back", "tb/t")
    c = raw(broker, V5)
    assert c.connect("twice-back", clean=False, props={**props, "ReceiveMaximum": 1}).session_present
    assert c.expect(r.PUBLISH).payload == b"m0"
    c.abort()
    c = raw(broker, V5)
    assert c.connect("twice-back", clean=False, props={**props, "ReceiveMaximum": 2}).session_present
    inflight = [c.expect(r.PUBLISH) for _ in range(2)]
    received = list(inflight)
    while inflight:
        oldest = inflight.pop(0)
        c.puback(oldest.pid)
        if len(received) < 5:
            nxt = c.expect(r.PUBLISH)
            inflight.append(nxt)
            received.append(nxt)
    assert [(p.pid, p.payload) for p in received] == [(p.pid, p.payload) for p in first]
    with pytest.raises(TimeoutError):
        extra = c.recv(QUIET)
        pytest.fail(f"a message resent twice: {extra!r}")


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 resends the in-flight message whatever its size")
def test_in_flight_message_too_large_for_the_new_connection_is_dropped(broker, raw, paho):
    """MQTT 5.0 §3.1.2.11.4 MQTT-3.1.2-24/25 with MQTT-4.4.0-1: a QoS 1 message in flight when the
    client reconnects with a Maximum Packet Size it no longer fits is not resent but dropped as if
    completed; the next message still comes."""
    props = {"SessionExpiryInterval": 60}
    c = raw(broker, V5)
    c.connect("mps-shrink", clean=False, props=props)
    c.subscribe(1, [("mpss/t", 1)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("mpss/t", b"L" * 500, qos=1)
    assert c.expect(r.PUBLISH).payload == b"L" * 500
    c.abort()  # network failure without acknowledging
    c = raw(broker, V5)
    ack = c.connect("mps-shrink", clean=False,
                    props={**props, "MaximumPacketSize": 100, "ReceiveMaximum": 1})
    assert ack.session_present is True
    pub.publish("mpss/t", b"small", qos=1)
    p = c.expect(r.PUBLISH)
    assert p.payload == b"small" and not p.dup, p
    c.puback(p.pid)
    c.ping()


@both_versions
def test_unacked_pubrel_resent_on_reconnect(broker, raw, paho, version):
    """MQTT 3.1.1 §4.4 MQTT-4.4.0-1 / MQTT 5.0 §4.4 MQTT-4.4.0-1: after the client sent PUBREC,
    a reconnect resumes the QoS 2 flow by re-sending PUBREL (not the PUBLISH)."""
    props = {"SessionExpiryInterval": 60} if version == V5 else None
    c = raw(broker, version)
    c.connect("relresend", clean=(version == V5), props=props)
    c.subscribe(1, [("rr/t", 2)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("rr/t", b"q2", qos=2)
    p = c.expect(r.PUBLISH)
    c.pubrec(p.pid)
    rel = c.expect(r.PUBREL)
    assert rel.pid == p.pid
    c.abort()
    c2 = raw(broker, version)
    assert c2.connect("relresend", clean=False, props=props).session_present is True
    rel2 = c2.expect(r.PUBREL)
    assert rel2.pid == p.pid
    c2.pubcomp(rel2.pid)
    c2.ping()


@both_versions
def test_publisher_qos1_acknowledged_only_once_delivered_to_broker(broker, paho, version):
    """MQTT 3.1.1 §4.3.2 / MQTT 5.0 §4.3.2: paho's on_publish fires for QoS 1 and QoS 2 only after
    the acknowledgement flow finished (PUBACK / PUBCOMP), for many concurrent messages."""
    pub = paho(broker, "pub", version=version)
    infos = [pub.publish("ack/t", b"x", qos=1 + i % 2, wait=False) for i in range(40)]
    for info in infos:
        assert pub.wait_published(info) in (0, r.RC_NO_MATCHING_SUBSCRIBERS)
