"""Client takeover: a second connection with the same ClientID (MQTT 3.1.1 §3.1.4 MQTT-3.1.4-2,
MQTT 5.0 §3.1.4 MQTT-3.1.4-3)."""

from __future__ import annotations

import pytest

import rawmqtt as r
from helpers import TIMEOUT, pprops

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@both_versions
def test_second_connection_closes_first(broker, raw, version):
    """MQTT 3.1.1 §3.1.4 MQTT-3.1.4-2 / MQTT 5.0 §3.1.4 MQTT-3.1.4-3: if the ClientID is already
    connected, the Server disconnects the existing client; the new connection works."""
    first = raw(broker, version)
    first.connect("same-id")
    second = raw(broker, version)
    second.connect("same-id")
    pkts = first.recv_until_closed(TIMEOUT)
    if version == V311:
        assert pkts == [], "no DISCONNECT may be sent to a 3.1.1 client"
    second.ping()


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E")
def test_v5_first_connection_gets_session_taken_over(broker, raw):
    """MQTT 5.0 §3.1.4 MQTT-3.1.4-3 and §3.14.2.1: the existing connection receives DISCONNECT
    with reason 0x8E Session taken over before it is closed."""
    first = raw(broker, V5)
    first.connect("same-id")
    second = raw(broker, V5)
    second.connect("same-id")
    pkts = first.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_SESSION_TAKEN_OVER, pkts


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E")
def test_v5_takeover_seen_by_paho(broker, paho):
    """MQTT 5.0 §3.1.4 MQTT-3.1.4-3: paho's on_disconnect of the first client reports the
    server's DISCONNECT reason 0x8E."""
    first = paho(broker, "same-paho", version=V5)
    paho(broker, "same-paho", version=V5)
    from_server, reason, _props = first.wait_disconnect()
    assert from_server is True
    assert reason == r.RC_SESSION_TAKEN_OVER


@both_versions
def test_takeover_continues_session_subscriptions(broker, paho, version):
    """MQTT 3.1.1 §3.1.2.4, §3.1.4 / MQTT 5.0 §3.1.2.4, §3.1.4: with CleanSession=0 / Clean
    Start=0 the new connection resumes the Session (Session Present 1) and its subscriptions."""
    props = pprops("CONNECT", SessionExpiryInterval=60) if version == V5 else None
    first = paho(broker, "taker", version=version, clean=False, props=props)
    first.subscribe("tk/t", 1)
    second = paho(broker, "taker", version=version, clean=False, props=props)
    assert second.session_present is True
    first.wait_disconnect()
    pub = paho(broker, "pub", version=V5)
    pub.publish("tk/t", b"to-new-connection", qos=1)
    assert second.get().payload == b"to-new-connection"
    first.assert_no_message(0.2)


@both_versions
def test_takeover_redelivers_unacknowledged_messages(broker, raw, paho, version):
    """MQTT 3.1.1 §4.4 MQTT-4.4.0-1 / MQTT 5.0 §4.4 MQTT-4.4.0-1: QoS 1 messages sent to the
    first connection but not acknowledged are re-sent (DUP=1, same Packet Identifier) on the
    connection that took the session over."""
    props = {"SessionExpiryInterval": 60} if version == V5 else None
    first = raw(broker, version)
    first.connect("taker", clean=(version == V5), props=props)
    first.subscribe(1, [("tk/t", 1)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("tk/t", b"unacked", qos=1)
    p = first.expect(r.PUBLISH)
    assert p.payload == b"unacked"
    second = raw(broker, version)
    ack = second.connect("taker", clean=False, props=props)
    assert ack.session_present is True
    again = second.expect(r.PUBLISH)
    assert (again.payload, again.pid, again.dup) == (b"unacked", p.pid, True)
    second.puback(again.pid)
    pub.publish("tk/t", b"queued-later", qos=1)
    nxt = second.expect(r.PUBLISH)
    assert nxt.payload == b"queued-later"
    second.puback(nxt.pid)


@both_versions
def test_takeover_with_clean_start_discards_session(broker, paho, version):
    """MQTT 3.1.1 MQTT-3.1.2-6 / MQTT 5.0 MQTT-3.1.2-4: a takeover with CleanSession=1 / Clean
    Start=1 starts a new Session: Session Present 0 and the old subscriptions are gone."""
    props = pprops("CONNECT", SessionExpiryInterval=60) if version == V5 else None
    first = paho(broker, "taker", version=version, clean=False, props=props)
    first.subscribe("tk/old", 1)
    second = paho(broker, "taker", version=version, clean=True, props=props)
    assert second.session_present is False
    second.subscribe("tk/sentinel", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("tk/old", b"old", qos=1)
    pub.publish("tk/sentinel", b"sentinel", qos=1)
    assert second.until(b"sentinel") == []


def test_repeated_takeovers_leave_one_working_connection(broker, raw):
    """MQTT 5.0 §3.1.4 MQTT-3.1.4-3: five consecutive connections with one ClientID: each earlier
    one is closed, the last one works."""
    conns = []
    for _ in range(5):
        c = raw(broker, V5)
        c.connect("flappy")
        conns.append(c)
    for c in conns[:-1]:
        c.recv_until_closed(TIMEOUT)
    conns[-1].ping()
