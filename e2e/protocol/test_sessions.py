"""Persistent sessions (MQTT 3.1.1 §3.1.2.4 / §4.1, MQTT 5.0 §3.1.2.4, §3.1.2.11.2, §4.1)."""

from __future__ import annotations

import queue
import time

import pytest

import rawmqtt as r
from helpers import QUIET, TIMEOUT, elapse, pprops

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def persistent(paho, broker, client_id, version, expiry=60, **kw):
    """Connect a client with a persistent session: CleanSession=0 (3.1.1) or Clean Start=0 and
    Session Expiry Interval ``expiry`` (5.0)."""
    if version == V5:
        return paho(broker, client_id, version=V5, clean=False,
                    props=pprops("CONNECT", SessionExpiryInterval=expiry), **kw)
    return paho(broker, client_id, version=V311, clean=False, **kw)


@both_versions
def test_subscriptions_and_queued_qos1_qos2_survive_disconnect(broker, paho, version):
    """MQTT 3.1.1 §3.1.2.4 MQTT-3.1.2-4, MQTT-3.1.2-5 / MQTT 5.0 §3.1.2.11.2, §4.1: the Session
    (subscriptions and QoS 1/2 messages published while disconnected) survives a disconnect and is
    resumed without re-subscribing."""
    sub = persistent(paho, broker, "persist", version)
    sub.subscribe("ps/q1", 1)
    sub.subscribe("ps/q2", 2)
    sub.disconnect()
    pub = paho(broker, "pub", version=V5)
    pub.publish("ps/q1", b"one", qos=1)
    pub.publish("ps/q2", b"two", qos=2)
    sub = persistent(paho, broker, "persist", version)
    assert sub.session_present is True
    msgs = sub.get_n(2)
    got = {m.payload: m.qos for m in msgs}
    assert got == {b"one": 1, b"two": 2}
    # the subscriptions are still active for live messages
    pub.publish("ps/q1", b"live", qos=1)
    assert sub.get().payload == b"live"


@both_versions
def test_qos0_queued_for_offline_session_when_enabled(broker_factory, paho, version):
    """MQTT 3.1.1 §3.1.2.4 (\"OPTIONALLY, QoS 0 messages pending transmission\") / MQTT 5.0
    §4.1: with queue-qos0 enabled, QoS 0 messages for an offline persistent session are queued."""
    b = broker_factory(queue_qos0=True)
    sub = persistent(paho, b, "q0on", version)
    sub.subscribe("q0/t", 1)
    sub.disconnect()
    pub = paho(b, "pub", version=V5)
    pub.publish("q0/t", b"qos0-while-offline", qos=0)
    pub.publish("q0/t", b"sentinel", qos=1)
    sub = persistent(paho, b, "q0on", version)
    before = sub.until(b"sentinel")
    assert [m.payload for m in before] == [b"qos0-while-offline"]
    assert before[0].qos == 0


@both_versions
def test_qos0_not_queued_when_disabled(broker_factory, paho, version):
    """MQTT 3.1.1 §3.1.2.4 / MQTT 5.0 §4.1: queueing QoS 0 for offline sessions is optional;
    with queue-qos0 false only the QoS 1 message is delivered on reconnect."""
    b = broker_factory(queue_qos0=False)
    sub = persistent(paho, b, "q0off", version)
    sub.subscribe("q0/t", 1)
    sub.disconnect()
    pub = paho(b, "pub", version=V5)
    pub.publish("q0/t", b"qos0-while-offline", qos=0)
    pub.publish("q0/t", b"sentinel", qos=1)
    sub = persistent(paho, b, "q0off", version)
    assert sub.until(b"sentinel") == []
    sub.assert_no_message(QUIET)


def test_v5_session_expires_after_interval(broker, paho):
    """MQTT 5.0 §3.1.2.11.2 MQTT-3.1.2-23, §4.1: the Server discards the Session when the Session
    Expiry Interval (1 s) has passed after the Network Connection closed: Session Present 0 and no
    queued messages on reconnect."""
    sub = persistent(paho, broker, "exp1", V5, expiry=1)
    sub.subscribe("exp/t", 1)
    sub.disconnect()
    pub = paho(broker, "pub", version=V5)
    pub.publish("exp/t", b"queued-before-expiry", qos=1)
    elapse(2.5)  # wait past the 1 s session expiry (time-based feature under test)
    sub = persistent(paho, broker, "exp1", V5, expiry=1)
    assert sub.session_present is False
    sub.subscribe("exp/sentinel", 1)
    pub.publish("exp/sentinel", b"sentinel", qos=1)
    assert sub.until(b"sentinel") == []


def test_v5_session_not_expired_before_interval(broker, paho):
    """MQTT 5.0 §3.1.2.11.2: a Session with expiry 5 s resumed after < 1 s still exists."""
    sub = persistent(paho, broker, "exp5", V5, expiry=5)
    sub.subscribe("exp/t", 1)
    sub.disconnect()
    sub = persistent(paho, broker, "exp5", V5, expiry=5)
    assert sub.session_present is True


def test_v5_disconnect_can_set_session_expiry_to_zero(broker, raw):
    """MQTT 5.0 §3.14.2.2.2: the Session Expiry Interval can be changed in DISCONNECT; setting 0
    ends the Session when the connection closes."""
    c = raw(broker, V5)
    c.connect("dse", clean=True, props={"SessionExpiryInterval": 60})
    c.subscribe(1, [("dse/t", 1)])
    c.disconnect(props={"SessionExpiryInterval": 0})
    c2 = raw(broker, V5)
    ack = c2.connect("dse", clean=False, props={"SessionExpiryInterval": 60})
    assert ack.session_present is False


def test_v5_disconnect_nonzero_expiry_after_zero_is_protocol_error(broker, raw, paho):
    """MQTT 5.0 §3.14.2.2.2 MQTT-3.14.2-2: if the CONNECT Session Expiry Interval was 0, sending a
    non-zero one in DISCONNECT is a Protocol Error; the Session must not be kept."""
    c = raw(broker, V5)
    c.connect("dse0", clean=True)
    c.subscribe(1, [("dse0/t", 1)])
    c.send(r.disconnect(props={"SessionExpiryInterval": 30}))
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) in (None, r.RC_PROTOCOL_ERROR), pkts
    c2 = raw(broker, V5)
    ack = c2.connect("dse0", clean=False, props={"SessionExpiryInterval": 60})
    assert ack.session_present is False


def test_v311_clean_session_discards_stored_session(broker, paho):
    """MQTT 3.1.1 §3.1.2.4 MQTT-3.1.2-6: CleanSession=1 discards the previous Session, and that
    session is not kept after this connection ends either."""
    sub = persistent(paho, broker, "cs311", V311)
    sub.subscribe("cs311/t", 1)
    sub.disconnect()
    c = paho(broker, "cs311", version=V311, clean=True)
    assert c.session_present is False
    c.disconnect()
    sub = persistent(paho, broker, "cs311", V311)
    assert sub.session_present is False
    sub.subscribe("cs311/sentinel", 1)
    pub = paho(broker, "pub", version=V311)
    pub.publish("cs311/t", b"old-subscription", qos=1)
    pub.publish("cs311/sentinel", b"sentinel", qos=1)
    assert sub.until(b"sentinel") == []


@both_versions
def test_offline_queue_is_bounded(broker_factory, paho, version):
    """MQTT 5.0 §4.1 / MQTT 3.1.1 §4.1 (non-normative: the Server may limit stored state): with
    --max-queued-messages 10, 50 QoS 1 messages published to an offline session result in at
    most 10 and at least 1 delivered on reconnect."""
    b = broker_factory(max_queued_messages=10)
    sub = persistent(paho, b, "bounded", version)
    sub.subscribe("bq/t", 1)
    sub.disconnect()
    pub = paho(b, "pub", version=V5)
    infos = [pub.publish("bq/t", f"m{i}".encode(), qos=1, wait=False) for i in range(50)]
    for info in infos:
        pub.wait_published(info)
    sub = persistent(paho, b, "bounded", version)
    assert sub.session_present is True
    got = [sub.get(TIMEOUT)]
    # the queue has been flushed once the connection is quiet for a bounded interval
    while True:
        try:
            got.append(sub.messages.get(timeout=1.0))
        except queue.Empty:
            break
    payloads = [m.payload for m in got]
    assert 1 <= len(payloads) <= 10, f"received {len(payloads)}: {payloads}"
    assert len(set(payloads)) == len(payloads), "duplicates delivered"


@both_versions
def test_queued_messages_keep_their_qos_and_order(broker, paho, version):
    """MQTT 5.0 §4.6 MQTT-4.6.0-6 / MQTT 3.1.1 §4.6 MQTT-4.6.0-6: messages queued for an offline
    session are delivered, for the same Topic and QoS, in the order they were published, at
    min(publish QoS, subscription QoS). (Order across different QoS levels is not required.)"""
    sub = persistent(paho, broker, "order-offline", version)
    sub.subscribe("oo/t", 2)
    sub.disconnect()
    pub = paho(broker, "pub", version=V5)
    for i in range(10):
        pub.publish("oo/t", f"m{i}".encode(), qos=1 + (i % 2))
    sub = persistent(paho, broker, "order-offline", version)
    msgs = sub.get_n(10)
    for qos in (1, 2):
        got = [m.payload for m in msgs if m.qos == qos]
        assert got == [f"m{i}".encode() for i in range(10) if 1 + (i % 2) == qos], (qos, got)


def test_v5_session_expiry_interval_max_means_never_expire(broker, raw):
    """MQTT 5.0 §3.1.2.11.2: 0xFFFFFFFF means the Session does not expire; it is resumable."""
    c = raw(broker, V5)
    c.connect("forever", clean=True, props={"SessionExpiryInterval": 0xFFFFFFFF})
    c.subscribe(1, [("fe/t", 1)])
    c.disconnect()
    c2 = raw(broker, V5)
    ack = c2.connect("forever", clean=False, props={"SessionExpiryInterval": 0xFFFFFFFF})
    assert ack.session_present is True
