"""CONNECT / CONNACK conformance (MQTT 3.1.1 §3.1-3.2, MQTT 5.0 §3.1-3.2)."""

from __future__ import annotations

import time

import pytest

import rawmqtt as r
from helpers import QUIET, TIMEOUT, pprops

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


# --- client identifiers -------------------------------------------------------------------------

def test_v5_empty_client_id_gets_assigned_client_identifier(broker, paho):
    """MQTT 5.0 §3.1.3.1 / §3.2.2.3.7, MQTT-3.1.3-6, MQTT-3.1.3-7, MQTT-3.2.2-16:
    a zero-length ClientID is accepted and the CONNACK carries an Assigned Client Identifier."""
    c = paho(broker, "", version=V5)
    session_present, rc, props = c.connack
    assert rc == 0
    assigned = getattr(props, "AssignedClientIdentifier", None)
    assert assigned, f"no Assigned Client Identifier in CONNACK: {props}"
    # the connection is usable
    assert c.subscribe("cid/t", 1) == [1]
    c.publish("cid/t", b"x", qos=1)
    assert c.get().payload == b"x"


def test_v5_assigned_client_identifiers_are_unique(broker, raw):
    """MQTT 5.0 §3.1.3.1 MQTT-3.1.3-6: the Server assigns a ClientID unique to that Server."""
    ids = set()
    for _ in range(3):
        c = raw(broker, V5)
        ack = c.connect("")
        ids.add(ack.props.get("AssignedClientIdentifier"))
    assert None not in ids and len(ids) == 3, ids


def test_v311_empty_client_id_with_clean_session_accepted(broker, raw):
    """MQTT 3.1.1 §3.1.3.1 MQTT-3.1.3-6, MQTT-3.1.3-7: zero-byte ClientId with CleanSession=1 is accepted."""
    c = raw(broker, V311)
    ack = c.connect("", clean=True)
    assert ack.reason == r.V3_ACCEPTED
    assert ack.session_present is False
    c.ping()


def test_v311_empty_client_id_without_clean_session_rejected(broker, raw):
    """MQTT 3.1.1 §3.1.3.1 MQTT-3.1.3-8: zero-byte ClientId with CleanSession=0 -> CONNACK return
    code 0x02 (Identifier rejected) and the connection is closed (MQTT-3.2.2-5)."""
    c = raw(broker, V311)
    c.send(r.connect("", version=V311, clean=False))
    ack = c.expect(r.CONNACK)
    assert ack.reason == r.V3_IDENTIFIER_REJECTED
    assert ack.session_present is False  # MQTT-3.2.2-4
    c.recv_until_closed(TIMEOUT)


# --- protocol level -----------------------------------------------------------------------------

def test_unsupported_protocol_level_gets_connack_0x01_then_close(broker, raw):
    """MQTT 3.1.1 §3.1.2.2 MQTT-3.1.2-2: unsupported Protocol Level -> CONNACK return code 0x01
    (unacceptable protocol version), then the Server disconnects.
    (MQTT 5.0 §3.1.2.2 allows 0x84 instead; for a level the server does not know it cannot
    know which format the client understands, so the 3.1.1 form is expected.)"""
    c = raw(broker, V311)
    c.send(r.connect("lvl6", version=6, with_props=False))
    pkts = c.recv_until_closed(TIMEOUT)
    assert pkts, "no CONNACK before close"
    ack = pkts[0]
    assert ack.ptype == r.CONNACK
    assert ack.body == b"\x00\x01", f"expected 3.1.1 CONNACK rc 0x01, got {ack.body!r}"


@pytest.mark.parametrize("name,level", [("MQTT", 3), ("MQIsdp", 4)])
def test_level_under_the_other_versions_name_gets_connack_0x01(broker, raw, name, level):
    """MQTT 3.1.1 MQTT-3.1.2-2 (as Mosquitto answers it): a known level under the other
    version's protocol name -- "MQTT" level 3, "MQIsdp" level 4, which misconfigured clients send
    -- is a level this name does not support: CONNACK 0x01 then close, not a silent close."""
    c = raw(broker, V311)
    c.send(r.connect("mixed", version=level, protocol_name=name, with_props=False))
    pkts = c.recv_until_closed(TIMEOUT)
    assert pkts, "no CONNACK before close"
    assert pkts[0].ptype == r.CONNACK
    assert pkts[0].body == b"\x00\x01", f"expected 3.1.1 CONNACK rc 0x01, got {pkts[0].body!r}"


# --- CONNECT packet ordering ----------------------------------------------------------------------

@both_versions
def test_second_connect_closes_connection(broker, raw, version):
    """MQTT 3.1.1 MQTT-3.1.0-2 / MQTT 5.0 §3.1 MQTT-3.1.0-2: a second CONNECT is a protocol
    violation and the Server closes the Network Connection."""
    c = raw(broker, version)
    c.connect("twice")
    c.send(r.connect("twice", version=version))
    pkts = c.recv_until_closed(TIMEOUT)
    assert all(p.ptype == r.DISCONNECT for p in pkts), pkts
    if version == V311:
        assert not pkts, "the server must not send DISCONNECT to a 3.1.1 client"
    else:
        assert r.disconnect_reason(pkts) in (None, r.RC_PROTOCOL_ERROR)


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes without sending DISCONNECT (a SHOULD in §4.13.1)")
def test_v5_second_connect_disconnect_reason_protocol_error(broker, raw):
    """MQTT 5.0 §3.1 MQTT-3.1.0-2 and §4.13.1: second CONNECT -> DISCONNECT 0x82 Protocol Error."""
    c = raw(broker, V5)
    c.connect("twice")
    c.send(r.connect("twice"))
    pkts = c.recv_until_closed(TIMEOUT)
    assert r.disconnect_reason(pkts) == r.RC_PROTOCOL_ERROR, pkts


@both_versions
def test_packets_sent_with_the_connect_are_handled(broker, raw, version):
    """MQTT 3.1.1 §3.1.4 / MQTT 5.0 §3.1.4: a Client may send further packets right after CONNECT,
    without waiting for CONNACK. Written together with the CONNECT (one segment, so the Server reads
    them in the same read), they are answered at once, in order, not when the Client next sends."""
    c = raw(broker, version)
    c.send(
        r.connect("eager", version=version)
        + r.subscribe(1, [("eager/t", 1)], version=version)
        + r.publish("eager/t", b"hello", 1, pid=2, version=version)
        + r.pingreq()
    )
    # Well inside the 2 s after which an idle connection's timer looks at it: the answers must
    # not wait for a timer either.
    soon = 1.5
    connack = c.expect(r.CONNACK, soon)
    assert connack.reason == 0
    suback = c.expect(r.SUBACK, soon)
    assert suback.pid == 1 and suback.reasons == [1]
    rest = [c.recv(soon) for _ in range(3)]
    names = sorted(p.name for p in rest)
    assert names == ["PINGRESP", "PUBACK", "PUBLISH"], rest
    delivery = next(p for p in rest if p.ptype == r.PUBLISH)
    assert delivery.payload == b"hello"
    # in order: the PUBACK for our PUBLISH comes before the PINGRESP for the later PINGREQ
    kinds = [p.ptype for p in rest]
    assert kinds.index(r.PUBACK) < kinds.index(r.PINGRESP), rest


@pytest.mark.parametrize("first", [
    pytest.param(r.pingreq(), id="PINGREQ"),
    pytest.param(r.subscribe(1, [("x/#", 0)], version=4), id="SUBSCRIBE"),
    pytest.param(r.publish("first/t", b"not-connected", 0, version=4), id="PUBLISH"),
    pytest.param(r.disconnect(version=4), id="DISCONNECT"),
])
def test_first_packet_not_connect_closes_connection(broker, raw, paho, first):
    """MQTT 3.1.1 §3.1 MQTT-3.1.0-1 / MQTT 5.0 MQTT-3.1.0-1: the first packet from the Client
    MUST be CONNECT; otherwise the Server closes the connection without processing it."""
    watcher = paho(broker, "watcher", version=V5)
    watcher.subscribe("first/#", 0)
    c = raw(broker, V311)
    c.send(first)
    pkts = c.recv_until_closed(TIMEOUT)
    assert not pkts, f"server answered a pre-CONNECT packet: {pkts}"
    # nothing was processed: the PUBLISH case must not reach subscribers
    watcher.publish("first/sentinel", b"sentinel")
    assert watcher.until(b"sentinel") == []


# --- keep alive --------------------------------------------------------------------------------

@pytest.mark.starling_only(reason="Mosquitto 2.0.11 checks keep alive only every ~5 s (closes after ~5.5 s)")
@both_versions
def test_keep_alive_timeout_closes_within_one_and_a_half_times(broker, raw, version):
    """MQTT 3.1.1 §3.1.2.10 / MQTT 5.0 §3.1.2.10 MQTT-3.1.2-22 (5.0) / MQTT-3.1.2-24 (3.1.1):
    no packet within 1.5 x Keep Alive -> the Server disconnects. Keep Alive 1 s: closed after
    1.2-3 s."""
    c = raw(broker, version)
    c.connect("ka", keepalive=1)
    t0 = time.monotonic()
    pkts = c.recv_until_closed(5)
    elapsed = time.monotonic() - t0
    assert 1.2 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s"
    if version == V5:
        assert r.disconnect_reason(pkts) in (None, r.RC_KEEP_ALIVE_TIMEOUT), pkts
    else:
        assert not pkts


def test_keep_alive_timeout_eventually_closes(broker, raw):
    """MQTT 5.0 §3.1.2.10 MQTT-3.1.2-22: an idle client with Keep Alive 1 s is disconnected
    (not before 1 x Keep Alive; bounded at 10 s to accommodate coarse timers); if a DISCONNECT
    is sent its reason code is 0x8D Keep Alive timeout."""
    c = raw(broker, V5)
    c.connect("ka-loose", keepalive=1)
    t0 = time.monotonic()
    pkts = c.recv_until_closed(10)
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.0, f"closed too early after {elapsed:.2f}s"
    assert r.disconnect_reason(pkts) in (None, r.RC_KEEP_ALIVE_TIMEOUT), pkts


@both_versions
def test_pingreq_keeps_connection_alive(broker, raw, version):
    """MQTT 3.1.1 §3.12 MQTT-3.12.4-1 / MQTT 5.0 §3.12: PINGREQ is answered with PINGRESP and
    counts as activity for Keep Alive (§3.1.2.10). Keep Alive 1 s, pinging every 0.5 s for 2 s."""
    c = raw(broker, version)
    c.connect("pinger", keepalive=1)
    for _ in range(4):
        c.ping()
        # pacing of the client's own traffic, not synchronisation
        assert c.is_open_after(0.5), "connection closed although PINGREQs were sent"
    c.ping()


def test_keep_alive_zero_disables_timeout(broker, raw):
    """MQTT 3.1.1 §3.1.2.10 / MQTT 5.0 §3.1.2.10: Keep Alive 0 turns the mechanism off; an idle
    connection stays open (checked for 1.6 s) and still answers PINGREQ."""
    c = raw(broker, V311)
    c.connect("ka0", keepalive=0)
    assert c.is_open_after(1.6)
    c.ping()


def test_v5_server_keep_alive_caps_client_keep_alive(broker_factory, raw, paho):
    """MQTT 5.0 §3.2.2.3.14 MQTT-3.2.2-21: with --max-keep-alive 10 a client asking for 60 s
    gets CONNACK Server Keep Alive = 10 (and must use it)."""
    b = broker_factory(max_keep_alive=10)
    c = raw(b, V5)
    ack = c.connect("ska", keepalive=60)
    assert ack.props.get("ServerKeepAlive") == 10, ack
    # paho also sees it
    p = paho(b, "ska-paho", version=V5, keepalive=60)
    assert getattr(p.connack[2], "ServerKeepAlive", None) == 10


def test_v5_server_keep_alive_not_raised_for_small_values(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.14: a client asking for a Keep Alive within the server maximum keeps it;
    if the server sends Server Keep Alive anyway, it must not exceed the maximum."""
    b = broker_factory(max_keep_alive=10)
    c = raw(b, V5)
    ack = c.connect("ska5", keepalive=5)
    ska = ack.props.get("ServerKeepAlive")
    assert ska is None or 0 < ska <= 10, ack


def test_v5_server_keep_alive_for_zero_keep_alive(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.14: a client asking Keep Alive 0 while the server enforces a maximum of
    10 s is told Server Keep Alive = 10 (the server may impose a keep alive; both Starling and
    Mosquitto do)."""
    b = broker_factory(max_keep_alive=10)
    c = raw(b, V5)
    ack = c.connect("ska0", keepalive=0)
    assert ack.props.get("ServerKeepAlive") == 10, ack


# --- session present / clean start ---------------------------------------------------------------

def test_v311_session_present_flag(broker, paho):
    """MQTT 3.1.1 §3.2.2.2 MQTT-3.2.2-1, MQTT-3.2.2-2, MQTT-3.2.2-3: Session Present is 0 with
    CleanSession=1, 0 for a new persistent session, 1 when resuming a stored session."""
    c = paho(broker, "sp311", version=V311, clean=True)
    assert c.session_present is False
    c.disconnect()
    c = paho(broker, "sp311", version=V311, clean=False)
    assert c.session_present is False, "new session must have Session Present 0"
    c.subscribe("sp/t", 1)
    c.disconnect()
    c = paho(broker, "sp311", version=V311, clean=False)
    assert c.session_present is True, "resumed session must have Session Present 1"
    c.disconnect()
    c = paho(broker, "sp311", version=V311, clean=True)
    assert c.session_present is False, "CleanSession=1 must have Session Present 0"


def test_v5_session_present_flag(broker, paho):
    """MQTT 5.0 §3.2.2.1.1 MQTT-3.2.2-2, MQTT-3.2.2-3: Session Present 0 with Clean Start, 0 when
    no session exists, 1 when an existing session (Session Expiry > 0) is resumed."""
    sess = pprops("CONNECT", SessionExpiryInterval=60)
    c = paho(broker, "sp5", version=V5, clean=False, props=sess)
    assert c.session_present is False
    c.subscribe("sp/t", 1)
    c.disconnect()
    c = paho(broker, "sp5", version=V5, clean=False, props=sess)
    assert c.session_present is True
    c.disconnect()
    c = paho(broker, "sp5", version=V5, clean=True, props=sess)
    assert c.session_present is False, "Clean Start must discard the session (MQTT-3.1.2-4)"


def test_v5_clean_start_discards_existing_session(broker, paho):
    """MQTT 5.0 §3.1.2.4 MQTT-3.1.2-4: Clean Start=1 discards any existing Session; its
    subscriptions no longer deliver."""
    sess = pprops("CONNECT", SessionExpiryInterval=60)
    c = paho(broker, "cs5", version=V5, clean=False, props=sess)
    c.subscribe("cs/old", 1)
    c.disconnect()
    c = paho(broker, "cs5", version=V5, clean=True, props=sess)
    assert c.session_present is False
    c.subscribe("cs/sentinel", 1)
    pub = paho(broker, "cs-pub", version=V5)
    pub.publish("cs/old", b"old-subscription", qos=1)
    pub.publish("cs/sentinel", b"sentinel", qos=1)
    assert c.until(b"sentinel") == []


def test_v5_session_expiry_zero_ends_session_at_disconnect(broker, paho):
    """MQTT 5.0 §3.1.2.11.2 MQTT-3.1.2-23: Session Expiry Interval absent (0) -> the Session ends
    when the Network Connection is closed, so a Clean Start=0 reconnect has Session Present 0."""
    c = paho(broker, "se0", version=V5, clean=False)
    c.subscribe("se0/t", 1)
    c.disconnect()
    c = paho(broker, "se0", version=V5, clean=False)
    assert c.session_present is False


@pytest.mark.starling_only(reason="Starling's --max-session-expiry; Mosquitto has no equivalent limit")
def test_v5_session_expiry_capped_by_server(broker_factory, raw):
    """MQTT 5.0 §3.2.2.3.2: if the Server uses a Session Expiry Interval different
    from the client's, it sends Session Expiry Interval in CONNACK. --max-session-expiry 5,
    client asks 100."""
    b = broker_factory(max_session_expiry=5)
    c = raw(b, V5)
    ack = c.connect("sx", props={"SessionExpiryInterval": 100})
    assert ack.props.get("SessionExpiryInterval") == 5, ack


# --- misc CONNECT fields -------------------------------------------------------------------------

@both_versions
def test_username_and_password_accepted_with_anonymous_access(broker, raw, version):
    """MQTT 3.1.1 §3.1.3.4-5 / MQTT 5.0 §3.1.3.5-6: User Name and Password fields are parsed; the
    test broker allows anonymous access so any credentials are accepted."""
    c = raw(broker, version)
    ack = c.connect("creds", username="user", password=b"\x00\x01secret")
    assert ack.reason == 0
    c.ping()


def test_v5_connack_has_no_duplicate_properties(broker, raw):
    """MQTT 5.0 §3.2.2.3: each CONNACK property other than User Property appears at most once
    (it is a Protocol Error to include one twice)."""
    c = raw(broker, V5)
    ack = c.connect("props")
    ids = [pid for pid, _ in ack.props.items if pid != r.PROPERTY_IDS["UserProperty"]]
    assert len(ids) == len(set(ids)), ack


def test_connection_usable_after_connack(broker, raw):
    """MQTT 5.0 §3.2: after CONNACK 0x00 the client can SUBSCRIBE and PUBLISH on the same
    connection (sanity check of the raw helper)."""
    c = raw(broker, V5)
    c.connect("usable")
    sa = c.subscribe(1, [("u/t", 1)])
    assert sa.reasons == [1]
    c.publish("u/t", b"hi", 1, pid=2)
    seen = [c.recv(TIMEOUT), c.recv(TIMEOUT)]
    types = sorted(p.ptype for p in seen)
    assert types == [r.PUBLISH, r.PUBACK], seen
    pub = next(p for p in seen if p.ptype == r.PUBLISH)
    assert pub.payload == b"hi" and pub.qos == 1
    c.puback(pub.pid)
    assert c.is_open_after(QUIET)
