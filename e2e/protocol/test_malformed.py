"""Malformed packet and protocol-error corpus (MQTT 3.1.1 §4.8, MQTT 5.0 §4.13).

Every case is raw bytes sent over a socket, either as the very first packet ("pre": instead of a
valid CONNECT) or after a valid CONNECT/CONNACK ("post").

``test_malformed_packet_closes_connection`` (both brokers) checks, while a 3.1.1 and a 5.0 paho
client are connected and exchanging messages:
  (a) the offending connection is closed by the broker within a bounded time,
  (b) a 3.1.1 connection never receives DISCONNECT; a 5.0 connection, if it receives a DISCONNECT
      (or a CONNACK for CONNECT errors), gets a failure reason code (>= 0x80),
  (c) the broker process is still alive and the two good clients still exchange messages.

``test_malformed_packet_disconnect_reason`` checks, for 5.0 post-CONNECT cases where the spec
names the error class, that a DISCONNECT with the right reason code (0x81 Malformed Packet, 0x82
Protocol Error, 0x90 Topic Name invalid, 0x94 Topic Alias invalid, 0x95 Packet too large) is sent
before the close (MQTT 5.0 §4.13.1: \"the Server SHOULD send a DISCONNECT packet containing the
reason code before closing\").
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import rawmqtt as r
from helpers import TIMEOUT, exchange

V311, V5 = 4, 5
MALFORMED, PROTOCOL, TOPIC_INVALID, ALIAS_INVALID, TOO_LARGE = 0x81, 0x82, 0x90, 0x94, 0x95

# Broker limit used for the corpus (Starling's default; set explicitly so Mosquitto enforces it).
MAX_PACKET_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Case:
    id: str
    ref: str                       # specification reference
    version: int                   # protocol of the offending connection
    data: bytes                    # the bad bytes
    pre: bool = False              # sent instead of CONNECT
    reasons: frozenset | None = None  # acceptable v5 DISCONNECT reason codes (post-CONNECT)
    mosquitto_reason_ok: bool = True  # False: Mosquitto 2.0.11 sends no / another reason code
    mosquitto_closes: bool = True     # False: Mosquitto 2.0.11 does not close the connection
    note: str = ""                    # what Mosquitto 2.0.11 does instead


def _connect_v311_body(flags: int, payload: bytes, *, name: bytes = b"MQTT", level: int = 4) -> bytes:
    return r.packet(r.CONNECT, 0, r.utf8(name) + bytes([level, flags]) + r.u16(60) + payload)


def _publish_v5_raw(topic: bytes, props: bytes, payload: bytes = b"p", flags: int = 0, pid: bytes = b"") -> bytes:
    return r.packet(r.PUBLISH, flags, r.utf8(topic) + pid + props + payload)


def _f(*codes: int) -> frozenset:
    return frozenset(codes)


CASES = [
    # ---- instead of CONNECT ------------------------------------------------------------------
    Case("first_packet_pingreq", "MQTT-3.1.0-1", V311, r.pingreq(), pre=True),
    Case("first_packet_reserved_type_0", "MQTT 3.1.1 §2.2.1 / MQTT 5.0 §2.1.2 (reserved type)", V311,
         b"\x00\x00", pre=True),
    Case("first_packet_remaining_length_5_bytes", "MQTT 5.0 §1.5.5 MQTT-1.5.5-1 / 3.1.1 §2.2.3", V311,
         b"\x10\xff\xff\xff\xff\x01", pre=True),
    Case("connect_wrong_protocol_name", "MQTT-3.1.2-1", V311,
         r.connect("bad", version=4, protocol_name="MQTX"), pre=True),
    Case("connect_reserved_flag_set_v311", "MQTT-3.1.2-3", V311,
         r.connect("bad", version=4, flags=0x03), pre=True),
    Case("connect_reserved_flag_set_v5", "MQTT 5.0 MQTT-3.1.2-3", V5,
         r.connect("bad", version=5, flags=0x03), pre=True),
    Case("connect_will_qos_3", "MQTT-3.1.2-14", V311,
         r.connect("bad", version=4, will_topic="w/t", will_payload=b"x", will_qos=3), pre=True),
    Case("connect_will_qos_without_will_flag", "MQTT 5.0 MQTT-3.1.2-11", V5,
         r.connect("bad", version=5, flags=0x02 | 0x08), pre=True),
    Case("connect_will_retain_without_will_flag", "MQTT 3.1.1 MQTT-3.1.2-15", V311,
         r.connect("bad", version=4, flags=0x02 | 0x20), pre=True),
    Case("connect_password_without_username_v311", "MQTT 3.1.1 MQTT-3.1.2-22", V311,
         r.connect("bad", version=4, password=b"pw"), pre=True),
    Case("connect_username_flag_but_no_username", "MQTT 3.1.1 MQTT-3.1.2-19 (truncated payload)", V311,
         _connect_v311_body(0x82, r.utf8("bad")), pre=True),
    Case("connect_truncated_client_id", "MQTT 5.0 §1.5.4 / §2.1.4 (remaining length too short for fields)",
         V311, _connect_v311_body(0x02, b"\x00\x0aabc"), pre=True),
    Case("connect_trailing_garbage", "MQTT 3.1.1 §3.1.3 / MQTT 5.0 §3.1.3 (bytes after the last field)", V311,
         r.connect("bad", version=4, trailing=b"\x00\x00\x00"), pre=True),
    Case("connect_fixed_header_flags_nonzero", "MQTT 3.1.1 MQTT-2.2.2-2 / MQTT 5.0 MQTT-2.1.3-1", V311,
         b"\x11" + r.connect("bad", version=4)[1:], pre=True),
    Case("connect_client_id_invalid_utf8", "MQTT 3.1.1 MQTT-1.5.3-1", V311,
         r.connect(b"\xc3\x28", version=4), pre=True),
    Case("connect_client_id_contains_nul", "MQTT 5.0 MQTT-1.5.4-2", V5,
         r.connect(b"a\x00b", version=5), pre=True),
    Case("connect_duplicate_property", "MQTT 5.0 §2.2.2.2 / §3.1.2.11.2 (property included twice)", V5,
         r.connect("bad", props=[("SessionExpiryInterval", 1), ("SessionExpiryInterval", 2)]), pre=True),
    Case("connect_unknown_property_id", "MQTT 5.0 §2.2.2.2 (invalid property identifier)", V5,
         r.connect("bad", props=b"\x02\x7f\x00"), pre=True),
    Case("connect_property_length_overruns_packet", "MQTT 5.0 §2.2.2.1", V5,
         r.connect("bad", props=b"\x32\x11\x00\x00\x00\x0a"), pre=True),
    Case("connect_receive_maximum_0", "MQTT 5.0 §3.1.2.11.3 (Receive Maximum 0 is a Protocol Error)", V5,
         r.connect("bad", props={"ReceiveMaximum": 0}), pre=True),
    Case("connect_maximum_packet_size_0", "MQTT 5.0 §3.1.2.11.4 (Maximum Packet Size 0 is a Protocol Error)",
         V5, r.connect("bad", props={"MaximumPacketSize": 0}), pre=True),
    Case("connect_request_problem_information_2", "MQTT 5.0 §3.1.2.11.7 (value other than 0/1)", V5,
         r.connect("bad", props={"RequestProblemInformation": 2}), pre=True),
    Case("connect_auth_data_without_method", "MQTT 5.0 §3.1.2.11.10 (Authentication Data without Method)", V5,
         r.connect("bad", props={"AuthenticationData": b"x"}), pre=True,
         mosquitto_closes=False, note="Mosquitto 2.0.11 accepts the CONNECT"),

    # ---- after a valid CONNECT: PUBLISH ---------------------------------------------------------
    Case("publish_qos_3", "MQTT-3.3.1-4", V5,
         _publish_v5_raw(b"a", b"\x00", flags=0x06, pid=b"\x00\x01"), reasons=_f(MALFORMED)),
    Case("publish_qos_3_v311", "MQTT 3.1.1 MQTT-3.3.1-4", V311,
         r.packet(r.PUBLISH, 0x06, r.utf8("a") + b"\x00\x01p")),
    Case("publish_wildcard_plus", "MQTT 5.0 MQTT-3.3.2-2", V5,
         r.publish("a/+", b"x", 0), reasons=_f(MALFORMED, PROTOCOL, TOPIC_INVALID)),
    Case("publish_wildcard_hash_v311", "MQTT 3.1.1 MQTT-3.3.2-2", V311, r.publish("a/#", b"x", 0, version=4)),
    Case("publish_topic_contains_nul", "MQTT 5.0 MQTT-1.5.4-2", V5,
         r.publish(b"a\x00b", b"x", 0), reasons=_f(MALFORMED)),
    Case("publish_topic_invalid_utf8", "MQTT 5.0 MQTT-1.5.4-1", V5,
         r.publish(b"\xff\xfe", b"x", 0), reasons=_f(MALFORMED)),
    Case("publish_topic_utf16_surrogate_v311", "MQTT 3.1.1 MQTT-1.5.3-1", V311,
         r.publish(b"a/\xed\xa0\x80", b"x", 0, version=4)),
    Case("publish_qos1_packet_id_0", "MQTT 5.0 MQTT-2.2.1-3", V5,
         r.publish("a", b"x", 1, pid=0), reasons=_f(MALFORMED, PROTOCOL)),
    Case("publish_qos0_dup_set", "MQTT 5.0 MQTT-3.3.1-2", V5,
         r.publish("a", b"x", 0, dup=True), reasons=_f(MALFORMED, PROTOCOL),
         mosquitto_closes=False, note="Mosquitto 2.0.11 ignores DUP on QoS 0"),
    Case("publish_empty_topic_without_alias", "MQTT 5.0 §3.3.2.1 (zero-length Topic Name and no Topic Alias)",
         V5, r.publish("", b"x", 0), reasons=_f(PROTOCOL, TOPIC_INVALID)),
    Case("publish_empty_topic_v311", "MQTT 3.1.1 MQTT-4.7.3-1", V311, r.publish("", b"x", 0, version=4)),
    Case("publish_topic_alias_0", "MQTT 5.0 MQTT-3.3.2-8", V5,
         r.publish("a", b"x", 0, props={"TopicAlias": 0}), reasons=_f(PROTOCOL, ALIAS_INVALID),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 sends 0x81"),
    Case("publish_subscription_identifier_from_client", "MQTT 5.0 MQTT-3.3.4-6", V5,
         r.publish("a", b"x", 0, props={"SubscriptionIdentifier": 1}), reasons=_f(PROTOCOL),
         mosquitto_closes=False, note="Mosquitto 2.0.11 accepts a client Subscription Identifier on PUBLISH"),
    Case("publish_duplicate_property", "MQTT 5.0 §3.3.2.3.2 (Payload Format Indicator twice)", V5,
         r.publish("a", b"x", 0, props=[("PayloadFormatIndicator", 1), ("PayloadFormatIndicator", 1)]),
         reasons=_f(PROTOCOL, MALFORMED),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 closes without DISCONNECT"),
    Case("publish_unknown_property_id", "MQTT 5.0 §2.2.2.2", V5,
         _publish_v5_raw(b"a", b"\x02\x7f\x00"), reasons=_f(MALFORMED)),
    Case("publish_property_length_overruns_packet", "MQTT 5.0 §2.2.2.1", V5,
         _publish_v5_raw(b"a", b"\x64\x01\x01", payload=b""), reasons=_f(MALFORMED)),
    Case("publish_truncated_topic", "MQTT 5.0 §1.5.4 / §2.1.4 (remaining length too short)", V5,
         b"\x30\x03\x00\x0aa", reasons=_f(MALFORMED)),

    # ---- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------
    Case("subscribe_fixed_header_flags_0000", "MQTT 5.0 MQTT-3.8.1-1", V5,
         r.subscribe(1, [("a", 0)], flags=0x0), reasons=_f(MALFORMED)),
    Case("subscribe_fixed_header_flags_v311", "MQTT 3.1.1 MQTT-3.8.1-1", V311,
         r.subscribe(1, [("a", 0)], version=4, flags=0x3)),
    Case("subscribe_no_filters", "MQTT 5.0 MQTT-3.8.3-2", V5, r.subscribe(1, []), reasons=_f(PROTOCOL, MALFORMED)),
    Case("subscribe_no_filters_v311", "MQTT 3.1.1 MQTT-3.8.3-3", V311, r.subscribe(1, [], version=4)),
    Case("subscribe_options_reserved_bits", "MQTT 5.0 MQTT-3.8.3-5", V5,
         r.subscribe(1, [("a", 0xC1)]), reasons=_f(MALFORMED)),
    Case("subscribe_qos_3_v311", "MQTT 3.1.1 MQTT-3.8.3-4", V311, r.subscribe(1, [("a", 3)], version=4)),
    Case("subscribe_retain_handling_3", "MQTT 5.0 §3.8.3.1 (Retain Handling 3 is a Protocol Error)", V5,
         r.subscribe(1, [("a", 0x30)]), reasons=_f(PROTOCOL, MALFORMED)),
    Case("subscribe_shared_with_no_local", "MQTT 5.0 MQTT-3.8.3-4", V5,
         r.subscribe(1, [("$share/g/a", 0x04)]), reasons=_f(PROTOCOL),
         mosquitto_closes=False, note="Mosquitto 2.0.11 grants the subscription"),
    Case("subscribe_packet_id_0", "MQTT 5.0 MQTT-2.2.1-3", V5,
         r.subscribe(0, [("a", 0)]), reasons=_f(MALFORMED, PROTOCOL)),
    Case("subscribe_subscription_identifier_0", "MQTT 5.0 §3.8.2.1.2 (Subscription Identifier 0)", V5,
         r.subscribe(1, [("a", 0)], props={"SubscriptionIdentifier": 0}), reasons=_f(PROTOCOL, MALFORMED)),
    Case("subscribe_missing_options_byte", "MQTT 5.0 §3.8.3 (truncated payload)", V5,
         r.packet(r.SUBSCRIBE, 0x2, r.u16(1) + b"\x00" + r.utf8("a/b")), reasons=_f(MALFORMED, PROTOCOL)),
    Case("subscribe_filter_invalid_utf8_v311", "MQTT 3.1.1 MQTT-1.5.3-1", V311,
         r.subscribe(1, [(b"\xc0\xaf", 0)], version=4)),
    Case("unsubscribe_fixed_header_flags_v311", "MQTT 3.1.1 MQTT-3.10.1-1", V311,
         r.unsubscribe(1, ["a"], version=4, flags=0x0)),
    Case("unsubscribe_no_filters", "MQTT 5.0 MQTT-3.10.3-2", V5, r.unsubscribe(1, []),
         reasons=_f(PROTOCOL, MALFORMED)),
    Case("unsubscribe_filter_invalid_utf8", "MQTT 5.0 MQTT-1.5.4-1", V5,
         r.unsubscribe(1, [b"\xff"]), reasons=_f(MALFORMED)),

    # ---- other packets -------------------------------------------------------------------------------
    Case("pubrel_fixed_header_flags_0000", "MQTT 5.0 MQTT-3.6.1-1", V5, b"\x60\x02\x00\x01",
         reasons=_f(MALFORMED),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 closes without DISCONNECT"),
    Case("pingreq_fixed_header_flags_v311", "MQTT 3.1.1 MQTT-2.2.2-2", V311, b"\xc1\x00",
         mosquitto_closes=False, note="Mosquitto 2.0.11 answers PINGRESP"),
    Case("pingreq_remaining_length_1", "MQTT 5.0 §3.12.1 (remaining length 0) / trailing garbage", V5,
         b"\xc0\x01\x00", reasons=_f(MALFORMED),
         mosquitto_closes=False, note="Mosquitto 2.0.11 answers PINGRESP"),
    Case("puback_trailing_garbage_v311", "MQTT 3.1.1 §3.4.1 (PUBACK remaining length is 2)", V311,
         b"\x40\x03\x00\x01\x00",
         mosquitto_closes=False, note="Mosquitto 2.0.11 parses it like a 5.0 PUBACK"),
    Case("second_connect", "MQTT 5.0 MQTT-3.1.0-2", V5, r.connect("again"), reasons=_f(PROTOCOL),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 closes without DISCONNECT"),
    Case("reserved_packet_type_0", "MQTT 5.0 §2.1.2 (reserved packet type)", V5, b"\x00\x00",
         reasons=_f(MALFORMED, PROTOCOL)),
    Case("auth_without_authentication_method", "MQTT 5.0 §4.12 (AUTH without Authentication Method in CONNECT)",
         V5, r.packet(r.AUTH, 0, b"\x19" + r.encode_props({"AuthenticationMethod": "X"})),
         reasons=_f(PROTOCOL),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 closes without DISCONNECT"),
    Case("auth_packet_in_v311", "MQTT 3.1.1 §2.2.1 (packet type 15 reserved)", V311, b"\xf0\x00"),
    Case("disconnect_with_body_v311", "MQTT 3.1.1 §3.14.1 (DISCONNECT remaining length 0)", V311, b"\xe0\x01\x00"),
    Case("remaining_length_5_bytes", "MQTT 5.0 §1.5.5 MQTT-1.5.5-1 (at most 4 bytes)", V5,
         b"\x30\xff\xff\xff\xff\x01", reasons=_f(MALFORMED),
         mosquitto_reason_ok=False, note="Mosquitto 2.0.11 closes without DISCONNECT"),
    Case("remaining_length_over_max_packet_size", "MQTT 5.0 §3.2.2.3.6 (over the server Maximum Packet Size)",
         V5, b"\x30" + r.vbi(268_435_455) + r.utf8("a") + b"x" * 64, reasons=_f(TOO_LARGE)),
    Case("remaining_length_over_max_packet_size_v311", "MQTT 3.1.1 §2.2.3 / server packet size limit", V311,
         b"\x30" + r.vbi(MAX_PACKET_SIZE + 10) + r.utf8("a") + b"x" * 64),
]

assert len(CASES) >= 25
assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def corpus_broker(broker_factory):
    return broker_factory(max_packet_size=MAX_PACKET_SIZE)


@pytest.fixture
def good_pair(corpus_broker, paho):
    """A 3.1.1 and a 5.0 paho client, both subscribed to good/#, exchanging messages."""
    a = paho(corpus_broker, "good311", version=V311)
    b = paho(corpus_broker, "good5", version=V5)
    a.subscribe("good/#", 1)
    b.subscribe("good/#", 1)
    exchange(a, b, "good/a")
    exchange(b, a, "good/b")
    return a, b


def _send_case(raw, broker, case: Case, name: str) -> r.RawClient:
    c = raw(broker, case.version)
    if not case.pre:
        c.connect(f"bad-{name}", version=case.version)
    try:
        c.send(case.data)
    except r.Closed:
        pass  # the broker may already be closing (e.g. huge remaining length)
    return c


CLOSE_CASES = [
    pytest.param(c, id=c.id, marks=() if c.mosquitto_closes else pytest.mark.starling_only(reason=c.note))
    for c in CASES
]


@pytest.mark.parametrize("case", CLOSE_CASES)
def test_malformed_packet_closes_connection(corpus_broker, good_pair, raw, case):
    """MQTT 3.1.1 §4.8 / MQTT 5.0 §4.13.1 MQTT-4.13.1-1 (case reference in the case id/ref): a
    Malformed Packet or Protocol Error closes the offending connection; the broker keeps serving
    other clients."""
    good311, good5 = good_pair
    c = _send_case(raw, corpus_broker, case, "close")
    pkts = c.recv_until_closed(TIMEOUT)  # (a)
    for p in pkts:  # (b)
        if case.version == V311:
            assert p.ptype != r.DISCONNECT, f"DISCONNECT sent to a 3.1.1 client: {pkts}"
            if p.ptype == r.CONNACK:
                assert case.pre and p.reason != 0, pkts
        else:
            if p.ptype == r.DISCONNECT:
                assert p.reason >= 0x80, pkts
                if case.reasons and case.mosquitto_reason_ok:
                    assert p.reason in case.reasons, f"{case.ref}: {pkts}"
            elif p.ptype == r.CONNACK:
                assert case.pre and p.reason >= 0x80, pkts
        assert p.ptype in (r.CONNACK, r.DISCONNECT), f"unexpected {p!r} ({case.ref})"
    assert corpus_broker.alive(), "broker process died"  # (c)
    exchange(good311, good5, "good/a")
    exchange(good5, good311, "good/b")


REASON_CASES = [
    pytest.param(c, id=c.id,
                 marks=() if c.mosquitto_reason_ok and c.mosquitto_closes
                 else pytest.mark.starling_only(reason=c.note))
    for c in CASES if c.version == V5 and not c.pre and c.reasons
]


@pytest.mark.parametrize("case", REASON_CASES)
def test_malformed_packet_disconnect_reason(corpus_broker, raw, case):
    """MQTT 5.0 §4.13.1 and §3.14.2.1: before closing because of a Malformed Packet / Protocol
    Error the Server sends DISCONNECT with the reason code the spec gives for the error (case
    reference in the case's ``ref``)."""
    c = _send_case(raw, corpus_broker, case, "reason")
    pkts = c.recv_until_closed(TIMEOUT)
    reason = r.disconnect_reason(pkts)
    assert reason is not None, f"closed without DISCONNECT ({case.ref})"
    assert reason in case.reasons, f"DISCONNECT {reason:#04x}, expected one of " \
        f"{sorted(hex(x) for x in case.reasons)} ({case.ref})"


CONNACK_CASES = [pytest.param(c, id=c.id) for c in CASES if c.version == V5 and c.pre]


@pytest.mark.starling_only(reason="a MAY (MQTT 5.0 §4.13.1); Mosquitto 2.0.11 closes most of these silently")
@pytest.mark.parametrize("case", CONNACK_CASES)
def test_v5_bad_connect_answered_with_connack_reason(corpus_broker, raw, case):
    """MQTT 5.0 §4.13.1 and §3.2.2.2: a 5.0 CONNECT that is a Malformed Packet or a Protocol Error
    gets a CONNACK with that reason code (0x81 or 0x82) before the close, so that the client can
    tell what was wrong."""
    c = _send_case(raw, corpus_broker, case, "connack")
    pkts = c.recv_until_closed(TIMEOUT)
    assert [p.ptype for p in pkts] == [r.CONNACK], f"{case.ref}: {pkts}"
    assert pkts[0].reason in (MALFORMED, PROTOCOL), f"{case.ref}: {pkts}"


@pytest.mark.starling_only(reason="a MAY (MQTT 5.0 §4.13.1); Mosquitto 2.0.11 closes silently")
def test_v5_connect_with_wildcard_will_topic_answered_0x90(corpus_broker, raw):
    """MQTT 5.0 §3.1.3.3 and §3.2.2.2: a Will Topic must be a valid Topic Name (no wildcards);
    the CONNACK says 0x90 Topic Name invalid before the close."""
    c = raw(corpus_broker, V5)
    c.send(r.connect("bad-will", version=5, will_topic="a/+", will_payload=b"x"))
    pkts = c.recv_until_closed(TIMEOUT)
    assert [(p.ptype, p.reason) for p in pkts] == [(r.CONNACK, TOPIC_INVALID)], pkts


def test_v5_second_connect_of_unknown_level_is_a_protocol_error(corpus_broker, raw):
    """MQTT 5.0 MQTT-3.1.0-2 and §3.14.2.1: a second CONNECT is a Protocol Error, whatever protocol
    level it announces; the DISCONNECT carries 0x82 (0x84 is not a DISCONNECT reason code)."""
    c = raw(corpus_broker, V5)
    c.connect("twice-unknown")
    c.send(_connect_v311_body(0x02, r.utf8("x"), level=6))
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) in (None, PROTOCOL), pkts
    assert all(p.ptype == r.DISCONNECT for p in pkts), pkts

