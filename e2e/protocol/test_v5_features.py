"""MQTT 5.0 features: subscription options, topic aliases, message expiry, properties, maximum
packet size, problem/response information, reason codes (MQTT 5.0 §2.4, §3.1.2.11, §3.3.2.3,
§3.4-§3.11)."""

from __future__ import annotations

import pytest

import rawmqtt as r
from helpers import TIMEOUT, elapse, pprops, prop

V311, V5 = 4, 5


# --- No Local ----------------------------------------------------------------------------------

def test_no_local_suppresses_own_messages(broker, paho):
    """MQTT 5.0 §3.8.3.1 MQTT-3.8.3-3: with No Local=1, messages are not forwarded to the
    connection that published them; other publishers' messages still arrive."""
    me = paho(broker, "me", version=V5)
    me.subscribe("nl/t", 1, no_local=True)
    me.publish("nl/t", b"own", qos=1)
    other = paho(broker, "other", version=V5)
    other.publish("nl/t", b"sentinel", qos=1)
    assert me.until(b"sentinel") == []


def test_without_no_local_own_messages_delivered(broker, paho):
    """MQTT 5.0 §3.8.3.1: with No Local=0 (default) a client receives its own publications."""
    me = paho(broker, "me", version=V5)
    me.subscribe("nl/t", 1, no_local=False)
    me.publish("nl/t", b"own", qos=1)
    assert me.get().payload == b"own"


# --- Topic aliases, client -> server --------------------------------------------------------------

def test_topic_alias_client_to_server(broker, raw, paho):
    """MQTT 5.0 §3.3.2.3.4 MQTT-3.3.2-12: a PUBLISH with Topic Name + Topic Alias sets the mapping;
    later PUBLISHes with a zero-length Topic Name and the alias use it; sending the alias with a
    new Topic Name re-maps it."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("ta/#", 1)
    c = raw(broker, V5)
    ack = c.connect("aliaser")
    assert ack.props.get("TopicAliasMaximum", 0) >= 1, ack
    c.publish("ta/one", b"1", 1, pid=1, props={"TopicAlias": 1})
    c.publish("", b"2", 1, pid=2, props={"TopicAlias": 1})
    c.publish("ta/two", b"3", 1, pid=3, props={"TopicAlias": 1})
    c.publish("", b"4", 1, pid=4, props={"TopicAlias": 1})
    for pid in (1, 2, 3, 4):
        a = c.expect(r.PUBACK)
        assert a.pid == pid and a.reason == 0
    msgs = sub.get_n(4)
    assert [(m.topic, m.payload) for m in msgs] == [
        ("ta/one", b"1"), ("ta/one", b"2"), ("ta/two", b"3"), ("ta/two", b"4")]
    # the alias is a per-connection artefact and is not forwarded
    assert all(prop(m, "TopicAlias") is None for m in msgs)


def test_topic_alias_above_server_maximum_disconnects_0x94(broker_factory, raw):
    """MQTT 5.0 §3.3.2.3.4 MQTT-3.3.2-9, §3.2.2.3.8: a Topic Alias greater than the server's
    Topic Alias Maximum (5) -> DISCONNECT 0x94 Topic Alias invalid, then close."""
    b = broker_factory(topic_alias_maximum=5)
    c = raw(b, V5)
    ack = c.connect("alias-max")
    assert ack.props.get("TopicAliasMaximum") == 5, ack
    c.publish("ta/ok", b"x", 0, props={"TopicAlias": 5})
    c.publish("ta/bad", b"x", 0, props={"TopicAlias": 6})
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_TOPIC_ALIAS_INVALID, pkts


def test_topic_alias_when_server_maximum_is_zero_disconnects_0x94(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.8 / MQTT-3.3.2-9: with --topic-alias-maximum 0 the server accepts no
    aliases (CONNACK Topic Alias Maximum absent or 0); using one -> DISCONNECT 0x94."""
    b = broker_factory(topic_alias_maximum=0)
    c = raw(b, V5)
    ack = c.connect("alias-none")
    assert ack.props.get("TopicAliasMaximum", 0) == 0, ack
    c.publish("ta/t", b"x", 0, props={"TopicAlias": 1})
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_TOPIC_ALIAS_INVALID, pkts


def test_unknown_topic_alias_with_empty_topic_is_error(broker, raw):
    """MQTT 5.0 §3.3.2.3.4 / §4.13: a zero-length Topic Name with an alias that has no mapping
    on this connection cannot be resolved -> the Server closes the connection; the DISCONNECT
    reason is 0x82 Protocol Error (0x94 Topic Alias invalid is also accepted: the spec does not
    name one code for this case)."""
    c = raw(broker, V5)
    c.connect("alias-unknown")
    c.publish("", b"x", 0, props={"TopicAlias": 3})
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) in (r.RC_PROTOCOL_ERROR, r.RC_TOPIC_ALIAS_INVALID), pkts


# --- Topic aliases, server -> client -----------------------------------------------------------

def test_no_topic_alias_sent_to_client_without_alias_maximum(broker, raw, paho):
    """MQTT 5.0 §3.1.2.11.5 MQTT-3.1.2-27: if the client sent no Topic Alias Maximum (0), the
    Server MUST NOT send Topic Aliases to it."""
    c = raw(broker, V5)
    c.connect("no-alias")
    c.subscribe(1, [("sa/#", 0)])
    pub = paho(broker, "pub", version=V5)
    for _ in range(3):
        pub.publish("sa/topic", b"x", qos=0)
    for _ in range(3):
        p = c.expect(r.PUBLISH)
        assert p.topic == "sa/topic" and "TopicAlias" not in p.props, p


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 never sends topic aliases to clients (allowed)")
def test_server_to_client_topic_alias(broker, raw, paho):
    """MQTT 5.0 §3.3.2.3.4 MQTT-3.3.2-10, MQTT-3.3.2-11 and §3.1.2.11.5: when the client announces
    Topic Alias Maximum 5, the Server may use aliases 1..5; repeated PUBLISHes on a topic use a
    consistent alias (empty Topic Name + alias once the mapping was established)."""
    c = raw(broker, V5)
    c.connect("wants-alias", props={"TopicAliasMaximum": 5})
    c.subscribe(1, [("sa/#", 0)])
    pub = paho(broker, "pub", version=V5)
    topics = ["sa/a", "sa/b", "sa/a", "sa/b", "sa/a", "sa/c"]
    for i, t in enumerate(topics):
        pub.publish(t, str(i).encode(), qos=0)
    mapping: dict[int, str] = {}
    aliased = 0
    for i, t in enumerate(topics):
        p = c.expect(r.PUBLISH)
        assert p.payload == str(i).encode()
        alias = p.props.get("TopicAlias")
        if alias is None:
            assert p.topic == t
            continue
        aliased += 1
        assert 1 <= alias <= 5, p
        if p.topic:
            mapping[alias] = p.topic  # establishes or re-maps the alias
            assert p.topic == t
        else:
            assert mapping.get(alias) == t, f"alias {alias} used before being mapped to {t}: {p}"
    assert aliased > 0, "the Server never used a topic alias"


# --- Message expiry ----------------------------------------------------------------------------

def _offline_session(paho, broker, client_id):
    sess = pprops("CONNECT", SessionExpiryInterval=60)
    sub = paho(broker, client_id, version=V5, clean=False, props=sess)
    sub.subscribe("mx/#", 1)
    sub.disconnect()
    return lambda: paho(broker, client_id, version=V5, clean=False, props=sess)


def test_message_expiry_decremented_while_queued(broker, paho):
    """MQTT 5.0 §3.3.2.3.3 MQTT-3.3.2-6: the Message Expiry Interval sent to the client is the
    received value minus the time the message waited in the Server (publish with 10, deliver
    after >= 1 s -> < 10)."""
    reconnect = _offline_session(paho, broker, "mx-dec")
    pub = paho(broker, "pub", version=V5)
    pub.publish("mx/t", b"aging", qos=1, props=pprops("PUBLISH", MessageExpiryInterval=10))
    elapse(1.2)  # let the queued message age (time-based feature under test)
    sub = reconnect()
    m = sub.get()
    assert m.payload == b"aging"
    remaining = prop(m, "MessageExpiryInterval")
    assert remaining is not None and 1 <= remaining < 10, remaining


def test_expired_queued_message_not_delivered(broker, paho):
    """MQTT 5.0 §3.3.2.3.3 MQTT-3.3.2-5: a queued message whose Message Expiry Interval passed
    before it could be delivered is not delivered."""
    reconnect = _offline_session(paho, broker, "mx-exp")
    pub = paho(broker, "pub", version=V5)
    pub.publish("mx/t", b"expired", qos=1, props=pprops("PUBLISH", MessageExpiryInterval=1))
    pub.publish("mx/t", b"sentinel", qos=1)
    elapse(2.0)  # let the first message expire (time-based feature under test)
    sub = reconnect()
    assert sub.until(b"sentinel") == []


def test_message_expiry_forwarded_on_live_delivery(broker, paho):
    """MQTT 5.0 §3.3.2.3.3 MQTT-3.3.2-6: a live message carries a Message Expiry Interval no
    greater than published; a message published without one carries none."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("mx/t", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("mx/t", b"with", qos=1, props=pprops("PUBLISH", MessageExpiryInterval=30))
    pub.publish("mx/t", b"without", qos=1)
    a, b = sub.get_n(2)
    assert a.payload == b"with" and 29 <= prop(a, "MessageExpiryInterval") <= 30
    assert b.payload == b"without" and prop(b, "MessageExpiryInterval") is None


# --- Properties passed through ------------------------------------------------------------------

def test_publish_properties_forwarded_unchanged(broker, paho):
    """MQTT 5.0 §3.3.2.3: Payload Format Indicator (MQTT-3.3.2-4), Content Type (MQTT-3.3.2-20),
    Response Topic (MQTT-3.3.2-15), Correlation Data (MQTT-3.3.2-16) and User Properties in order
    (MQTT-3.3.2-17, MQTT-3.3.2-18) are forwarded unchanged."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("pp/t", 2)
    pub = paho(broker, "pub", version=V5)
    user = [("b", "2"), ("a", "1"), ("a", "dup"), ("ünï", "çødé")]
    pub.publish("pp/t", "text payload ✓".encode(), qos=2, props=pprops(
        "PUBLISH", PayloadFormatIndicator=1, ContentType="application/json; charset=utf-8",
        ResponseTopic="pp/reply", CorrelationData=b"\x00\xffcorr", UserProperty=user))
    m = sub.get()
    assert m.payload == "text payload ✓".encode()
    assert prop(m, "PayloadFormatIndicator") == 1
    assert prop(m, "ContentType") == "application/json; charset=utf-8"
    assert prop(m, "ResponseTopic") == "pp/reply"
    assert prop(m, "CorrelationData") == b"\x00\xffcorr"
    assert prop(m, "UserProperty") == user


def test_properties_forwarded_on_raw_publish(broker, raw, paho):
    """MQTT 5.0 §3.3.2.3: the same check with a hand-encoded PUBLISH, to a 3.1.1 subscriber
    (which receives the payload only) and a 5.0 subscriber (which receives the properties)."""
    s5 = raw(broker, V5)
    s5.connect("s5")
    s5.subscribe(1, [("pp/#", 1)])
    s3 = paho(broker, "s3", version=V311)
    s3.subscribe("pp/#", 1)
    c = raw(broker, V5)
    c.connect("pp-raw")
    c.publish("pp/raw", b"\x01\x02", 1, pid=9, props=[
        ("UserProperty", ("k", "v1")), ("ContentType", "ct"), ("UserProperty", ("k", "v2")),
        ("CorrelationData", b""), ("ResponseTopic", "pp/r"), ("PayloadFormatIndicator", 0)])
    assert c.expect(r.PUBACK).pid == 9
    p = s5.expect(r.PUBLISH)
    assert p.payload == b"\x01\x02"
    assert p.props.getall("UserProperty") == [("k", "v1"), ("k", "v2")]
    assert p.props.get("ContentType") == "ct"
    assert p.props.get("CorrelationData") == b""
    assert p.props.get("ResponseTopic") == "pp/r"
    assert p.props.get("PayloadFormatIndicator", 0) == 0
    assert s3.get().payload == b"\x01\x02"


# --- Maximum Packet Size announced by the client -----------------------------------------------

def test_client_maximum_packet_size_oversized_message_dropped(broker, raw, paho):
    """MQTT 5.0 §3.1.2.11.4 MQTT-3.1.2-24, MQTT-3.1.2-25: the Server MUST NOT send a packet larger
    than the client's Maximum Packet Size (100); it discards the message, the connection stays
    open, and a following small message is delivered."""
    c = raw(broker, V5)
    c.connect("small", props={"MaximumPacketSize": 100})
    c.subscribe(1, [("mps/t", 1)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("mps/t", b"L" * 500, qos=1)
    pub.publish("mps/t", b"small", qos=1)
    p = c.expect(r.PUBLISH)
    assert p.payload == b"small", p
    c.puback(p.pid)
    assert len(p.body) + 2 <= 100
    c.ping()  # still connected


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 keeps the dropped QoS 1 message in the inflight window")
def test_client_maximum_packet_size_dropped_message_counts_as_completed(broker, raw, paho):
    """MQTT 5.0 §3.1.2.11.4 MQTT-3.1.2-25: a discarded oversized message is treated "as if it had
    completed sending": with Receive Maximum 1 it does not occupy the only inflight slot, so the
    next small QoS 1 message is delivered."""
    c = raw(broker, V5)
    c.connect("small-rm1", props={"MaximumPacketSize": 100, "ReceiveMaximum": 1})
    c.subscribe(1, [("mps/t", 1)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("mps/t", b"L" * 500, qos=1)
    pub.publish("mps/t", b"small", qos=1)
    p = c.expect(r.PUBLISH)
    assert p.payload == b"small", p
    c.puback(p.pid)
    c.ping()


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 keeps the dropped QoS 1 message in the inflight window")
def test_client_maximum_packet_size_many_dropped_from_the_offline_queue(broker, raw, paho):
    """MQTT 5.0 §3.1.2.11.4 MQTT-3.1.2-25 with a stored session: five oversized QoS 1 messages
    queued while the client was away, then a small one. On reconnect with Receive Maximum 1 each
    oversized one is dropped as if completed, and the small one follows at once, not only when
    the client or a publisher next sends something."""
    props = {"MaximumPacketSize": 100, "ReceiveMaximum": 1, "SessionExpiryInterval": 300}
    c = raw(broker, V5)
    c.connect("mps-queued", clean=False, props=props)
    c.subscribe(1, [("mpsq/t", 1)])
    c.send(r.disconnect())
    c.recv_until_closed(TIMEOUT)
    pub = paho(broker, "pub", version=V5)
    for _ in range(5):
        pub.publish("mpsq/t", b"L" * 500, qos=1)
    pub.publish("mpsq/t", b"small", qos=1)
    c = raw(broker, V5)
    ack = c.connect("mps-queued", clean=False, props=props)
    assert ack.session_present
    # Bounded well below the 2 s after which an idle connection parks (a parked one answers
    # PINGREQ itself and would never look at its queue again).
    p = c.expect(r.PUBLISH, 1.5)
    assert p.payload == b"small", p
    c.puback(p.pid)
    c.ping()


def test_client_maximum_packet_size_paho(broker, paho):
    """MQTT 5.0 §3.1.2.11.4 MQTT-3.1.2-25 (paho client): an oversized QoS 0 message is dropped,
    a small one after it arrives."""
    small = paho(broker, "small", version=V5, props=pprops("CONNECT", MaximumPacketSize=100))
    small.subscribe("mps/t", 0)
    pub = paho(broker, "pub", version=V5)
    pub.publish("mps/t", b"L" * 500, qos=0)
    pub.publish("mps/t", b"sentinel", qos=0)
    assert small.until(b"sentinel") == []
    assert small.connected


# --- Problem / response information -----------------------------------------------------------

def test_request_problem_information_0_no_reason_string_on_acks(broker, raw):
    """MQTT 5.0 §3.1.2.11.7 MQTT-3.1.2-29: with Request Problem Information 0 the Server MUST NOT
    send a Reason String or User Properties on packets other than PUBLISH, CONNACK, DISCONNECT:
    checked on PUBACK 0x10 and UNSUBACK 0x11 error paths."""
    c = raw(broker, V5)
    c.connect("rpi0", props={"RequestProblemInformation": 0})
    c.publish("nobody/listens", b"x", 1, pid=1)
    ack = c.expect(r.PUBACK)
    assert ack.reason == r.RC_NO_MATCHING_SUBSCRIBERS
    assert "ReasonString" not in ack.props and "UserProperty" not in ack.props, ack
    ua = c.unsubscribe(2, ["never/subscribed"])
    assert ua.reasons == [r.RC_NO_SUBSCRIPTION_EXISTED]
    assert "ReasonString" not in ua.props and "UserProperty" not in ua.props, ua


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes the connection on the invalid filter a/#/b instead of SUBACK 0x8F")
def test_request_problem_information_0_no_reason_string_on_suback_failure(broker, raw):
    """MQTT 5.0 §3.1.2.11.7 MQTT-3.1.2-29: SUBACK 0x8F for the invalid filter 'a/#/b' carries no
    Reason String when Request Problem Information is 0."""
    c = raw(broker, V5)
    c.connect("rpi0s", props={"RequestProblemInformation": 0})
    sa = c.subscribe(1, [("a/#/b", 0)])
    assert sa.reasons == [r.RC_TOPIC_FILTER_INVALID]
    assert "ReasonString" not in sa.props and "UserProperty" not in sa.props, sa


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 does not implement Response Information")
def test_request_response_information_returns_response_information(broker, raw):
    """MQTT 5.0 §3.1.2.11.6 and §3.2.2.3.15: Request Response Information 1 -> CONNACK carries a
    Response Information string (Starling provides one)."""
    c = raw(broker, V5)
    ack = c.connect("rri1", props={"RequestResponseInformation": 1})
    info = ack.props.get("ResponseInformation")
    assert isinstance(info, str) and info, ack


def test_no_response_information_unless_requested(broker, raw):
    """MQTT 5.0 §3.1.2.11.6 MQTT-3.1.2-28: with Request Response Information 0 (or absent) the
    Server MUST NOT return Response Information."""
    c = raw(broker, V5)
    ack = c.connect("rri0", props={"RequestResponseInformation": 0})
    assert "ResponseInformation" not in ack.props, ack
    c2 = raw(broker, V5)
    ack2 = c2.connect("rri-absent")
    assert "ResponseInformation" not in ack2.props, ack2


# --- Reason codes on acknowledgements ----------------------------------------------------------

def test_suback_reason_codes_granted_qos(broker, raw):
    """MQTT 5.0 §3.9.3 MQTT-3.9.3-1, MQTT-3.9.3-2: one SUBACK reason code per filter, in order:
    0x00, 0x01, 0x02 Granted QoS."""
    c = raw(broker, V5)
    c.connect("suback")
    sa = c.subscribe(7, [("s/0", r.sub_opts(0)), ("s/1", r.sub_opts(1)), ("s/2", r.sub_opts(2))])
    assert sa.reasons == [r.RC_SUCCESS, r.RC_GRANTED_QOS1, r.RC_GRANTED_QOS2]


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes the connection instead of SUBACK 0x8F")
def test_suback_topic_filter_invalid_0x8f(broker, raw):
    """MQTT 5.0 §3.9.3 / §4.7.1.2 MQTT-4.7.1-1: 'a/#/b' is not a valid filter. Starling answers
    SUBACK 0x8F for that filter and still grants the valid ones in the same packet; the connection
    stays usable."""
    c = raw(broker, V5)
    c.connect("suback-bad")
    sa = c.subscribe(3, [("ok/1", r.sub_opts(1)), ("a/#/b", r.sub_opts(1)), ("a/b+", r.sub_opts(0))])
    assert sa.reasons == [r.RC_GRANTED_QOS1, r.RC_TOPIC_FILTER_INVALID, r.RC_TOPIC_FILTER_INVALID]
    c.ping()


def test_v311_suback_return_codes(broker, raw):
    """MQTT 3.1.1 §3.9.3 MQTT-3.9.3-1: SUBACK return codes 0x00/0x01/0x02 in filter order."""
    c = raw(broker, V311)
    c.connect("suback311")
    sa = c.subscribe(4, [("s/2", 2), ("s/0", 0), ("s/1", 1)])
    assert sa.reasons == [2, 0, 1]


def test_unsuback_reason_codes(broker, raw):
    """MQTT 5.0 §3.11.3: UNSUBACK has one reason code per filter: 0x00 Success for an existing
    subscription, 0x11 No subscription existed otherwise."""
    c = raw(broker, V5)
    c.connect("unsuback")
    c.subscribe(1, [("u/a", 0)])
    ua = c.unsubscribe(2, ["u/a", "u/none", "u/a"])
    assert ua.reasons == [r.RC_SUCCESS, r.RC_NO_SUBSCRIPTION_EXISTED, r.RC_NO_SUBSCRIPTION_EXISTED]


def test_puback_no_matching_subscribers(broker, raw):
    """MQTT 5.0 §3.4.2.1: PUBACK reason 0x10 No matching subscribers for a QoS 1 PUBLISH nobody
    is subscribed to (a MAY in the spec; Starling and Mosquitto both send it), 0x00 once there is
    a subscriber."""
    c = raw(broker, V5)
    c.connect("nms")
    c.publish("nms/t", b"x", 1, pid=1)
    assert c.expect(r.PUBACK).reason == r.RC_NO_MATCHING_SUBSCRIBERS
    c.subscribe(3, [("nms/t", 0)])
    c.publish("nms/t", b"y", 1, pid=4)
    seen = [c.recv(TIMEOUT), c.recv(TIMEOUT)]
    ack = next(p for p in seen if p.ptype == r.PUBACK)
    assert ack.reason == r.RC_SUCCESS


def test_pubrec_reason_without_subscribers(broker, raw):
    """MQTT 5.0 §3.5.2.1: PUBREC for a QoS 2 PUBLISH nobody is subscribed to has reason 0x00 or
    0x10 (the Server MAY use 0x10); the flow completes with PUBCOMP 0x00."""
    c = raw(broker, V5)
    c.connect("nms2")
    c.publish("nms/t", b"x", 2, pid=2)
    rec = c.expect(r.PUBREC)
    assert rec.reason in (r.RC_SUCCESS, r.RC_NO_MATCHING_SUBSCRIBERS)
    c.pubrel(2)
    comp = c.expect(r.PUBCOMP)
    assert comp.pid == 2 and comp.reason == 0


def test_connack_capability_properties(broker, raw):
    """MQTT 5.0 §3.2.2.3.9-§3.2.2.3.13: Retain, Wildcard Subscription, Subscription Identifier and
    Shared Subscription are supported: the properties are absent (meaning available) or 1, and
    Maximum QoS is absent (2) or 2."""
    c = raw(broker, V5)
    ack = c.connect("caps")
    for name in ("RetainAvailable", "WildcardSubscriptionAvailable",
                 "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable"):
        assert ack.props.get(name, 1) == 1, (name, ack)
    assert ack.props.get("MaximumQoS", 2) == 2


def test_user_properties_on_subscribe_are_accepted(broker, raw):
    """MQTT 5.0 §3.8.2.1.3: SUBSCRIBE may carry User Properties; the subscription works."""
    c = raw(broker, V5)
    c.connect("sub-up")
    sa = c.subscribe(1, [("up/t", 1)], props=[("UserProperty", ("a", "b"))])
    assert sa.reasons == [1]
    c.publish("up/t", b"x", 0)
    assert c.expect(r.PUBLISH).payload == b"x"
    assert c.is_open_after(0.1)

