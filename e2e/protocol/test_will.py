"""Will messages (MQTT 3.1.1 §3.1.2.5-3.1.2.7, MQTT 5.0 §3.1.2.5, §3.1.3.2, §3.14.2.1)."""

from __future__ import annotations

import time

import pytest

import rawmqtt as r
from helpers import QUIET, TIMEOUT, elapse, prop

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def will_client(raw, broker, version, client_id="willer", *, keepalive=30, props=None,
                will_props=None, will_qos=1, will_retain=False, clean=True):
    c = raw(broker, version)
    c.connect(client_id, clean=clean, keepalive=keepalive, props=props, will_topic="will/t",
              will_payload=b"gone:" + client_id.encode(), will_qos=will_qos,
              will_retain=will_retain, will_props=will_props)
    return c


@pytest.fixture
def watcher(broker, paho):
    w = paho(broker, "watcher", version=V5)
    w.subscribe("will/#", 2)
    return w


@both_versions
def test_will_published_on_ungraceful_close(broker, raw, watcher, version):
    """MQTT 3.1.1 §3.1.2.5 MQTT-3.1.2-8 / MQTT 5.0 §3.1.2.5 MQTT-3.1.2-8: the Will Message is
    published when the Network Connection is closed without a DISCONNECT."""
    c = will_client(raw, broker, version)
    c.abort()
    m = watcher.get()
    assert (m.topic, m.payload, m.qos) == ("will/t", b"gone:willer", 1)


@both_versions
def test_will_published_on_keep_alive_timeout(broker, raw, watcher, version):
    """MQTT 3.1.1 §3.1.2.5 (\"fails to communicate within the Keep Alive time\") / MQTT 5.0
    §3.1.2.5, §3.1.2.10: a keep-alive timeout is an abnormal close, so the Will is published.
    Keep Alive 1 s; bounded at 10 s to accommodate coarse server timers."""
    c = will_client(raw, broker, version, keepalive=1)
    t0 = time.monotonic()
    m = watcher.get(timeout=10)
    assert m.payload == b"gone:willer"
    assert time.monotonic() - t0 >= 1.0
    c.close()


@both_versions
def test_will_not_published_on_normal_disconnect(broker, raw, watcher, version):
    """MQTT 3.1.1 §3.1.2.5 MQTT-3.1.2-10, §3.14.4 MQTT-3.14.4-3 / MQTT 5.0 MQTT-3.1.2-10: a
    DISCONNECT (reason 0x00) deletes the Will Message without publishing it."""
    c = will_client(raw, broker, version)
    c.disconnect()
    watcher.publish("will/sentinel", b"sentinel", qos=1)
    assert watcher.until(b"sentinel") == []
    watcher.assert_no_message(QUIET)


def test_v5_disconnect_with_will_message_reason_publishes_will(broker, raw, watcher):
    """MQTT 5.0 §3.14.2.1 reason code 0x04 Disconnect with Will Message: the Server publishes the
    Will Message although the client disconnected with a DISCONNECT packet."""
    c = will_client(raw, broker, V5)
    c.disconnect(reason=r.RC_DISCONNECT_WITH_WILL)
    m = watcher.get()
    assert m.payload == b"gone:willer"


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 deletes the will on any DISCONNECT but 0x04")
@pytest.mark.parametrize("reason", [r.RC_UNSPECIFIED, 0x83, 0x93], ids=["0x80", "0x83", "0x93"])
def test_v5_disconnect_with_an_error_reason_publishes_will(broker, raw, watcher, reason):
    """MQTT 5.0 MQTT-3.1.2-8 and MQTT-3.14.4-3: only a DISCONNECT with Reason Code 0x00 deletes the
    Will Message; a client leaving with an error code (0x80 Unspecified error, 0x83
    Implementation specific error, 0x93 Receive Maximum exceeded) has it published."""
    c = will_client(raw, broker, V5)
    c.disconnect(reason=reason)
    m = watcher.get()
    assert m.payload == b"gone:willer"


@both_versions
def test_will_published_after_protocol_error(broker, raw, watcher, version):
    """MQTT 3.1.1 §3.1.2.5 (\"the Server closes the Network Connection because of a protocol
    error\") / MQTT 5.0 §3.1.2.5: a connection closed by the Server because of a malformed packet
    publishes the Will."""
    c = will_client(raw, broker, version)
    c.send(b"\x36\x04\x00\x01ax")  # PUBLISH with QoS 3 (malformed, MQTT-3.3.1-4)
    c.recv_until_closed(TIMEOUT)
    m = watcher.get()
    assert m.payload == b"gone:willer"


@both_versions
def test_will_retain_flag_stores_will_as_retained(broker, raw, paho, version):
    """MQTT 3.1.1 §3.1.2.7 MQTT-3.1.2-17 / MQTT 5.0 §3.1.2.7 MQTT-3.1.2-15: Will Retain=1 ->
    the Will Message is published as a retained message."""
    c = will_client(raw, broker, version, will_retain=True)
    c.abort()
    # a subscriber arriving later gets it as a retained message (poll with a bounded deadline
    # because the will is published asynchronously after the close)
    deadline = time.monotonic() + TIMEOUT
    while True:
        sub = paho(broker, f"late{time.monotonic_ns()}", version=V311)
        sub.subscribe("will/t", 1)
        try:
            m = sub.get(timeout=0.3)
            break
        except AssertionError:
            sub.close()
            if time.monotonic() > deadline:
                raise
    assert m.payload == b"gone:willer" and m.retain is True


def test_v5_will_properties_passed_through(broker, raw, watcher):
    """MQTT 5.0 §3.1.3.2: Will Properties (Content Type, Response Topic, Correlation Data, User
    Property, Payload Format Indicator) are sent with the Will Message."""
    c = will_client(raw, broker, V5, will_props=[
        ("ContentType", "text/plain"),
        ("ResponseTopic", "will/resp"),
        ("CorrelationData", b"\x01\x02"),
        ("UserProperty", ("k", "v")),
        ("PayloadFormatIndicator", 1),
    ])
    c.abort()
    m = watcher.get()
    assert prop(m, "ContentType") == "text/plain"
    assert prop(m, "ResponseTopic") == "will/resp"
    assert prop(m, "CorrelationData") == b"\x01\x02"
    assert prop(m, "UserProperty") == [("k", "v")]
    assert prop(m, "PayloadFormatIndicator") == 1


def test_v5_will_delay_cancelled_by_reconnect(broker, raw, watcher):
    """MQTT 5.0 §3.1.3.2.2 Will Delay Interval, MQTT-3.1.3-9: if a new Network Connection to the
    Session is made before the Will Delay Interval (2 s) passes, the Will is not sent."""
    sess = {"SessionExpiryInterval": 30}
    c = will_client(raw, broker, V5, props=sess, will_props={"WillDelayInterval": 2})
    c.abort()
    t_close = time.monotonic()
    c2 = raw(broker, V5)
    ack = c2.connect("willer", clean=False, props=sess)
    assert ack.session_present is True
    assert time.monotonic() - t_close < 1.0, "reconnect took too long for this test"
    # wait past the will delay (time-based feature under test), then check nothing came
    elapse(max(0.0, t_close + 3.0 - time.monotonic()))
    watcher.publish("will/sentinel", b"sentinel", qos=1)
    assert watcher.until(b"sentinel") == []
    c2.disconnect()


def test_v5_will_sent_after_will_delay(broker, raw, watcher):
    """MQTT 5.0 §3.1.3.2.2 Will Delay Interval: without a reconnect the Will is published after
    the delay (2 s), not before."""
    sess = {"SessionExpiryInterval": 30}
    c = will_client(raw, broker, V5, props=sess, will_props={"WillDelayInterval": 2})
    c.abort()
    t_close = time.monotonic()
    m = watcher.get(timeout=6)
    waited = time.monotonic() - t_close
    assert m.payload == b"gone:willer"
    assert 1.5 <= waited <= 5.0, f"will published after {waited:.2f}s"


def test_v5_will_sent_when_session_expires_before_will_delay(broker, raw, watcher):
    """MQTT 5.0 §3.1.3.2.2 and §3.1.2.5: the Will is published when the Will Delay Interval has
    passed or the Session ends, whichever happens first: Session Expiry 1 s, Will Delay 30 s ->
    the Will arrives after about 1 s."""
    c = will_client(raw, broker, V5, props={"SessionExpiryInterval": 1},
                    will_props={"WillDelayInterval": 30})
    c.abort()
    t_close = time.monotonic()
    m = watcher.get(timeout=6)
    waited = time.monotonic() - t_close
    assert m.payload == b"gone:willer"
    assert waited <= 5.0, f"will published after {waited:.2f}s"


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 waits for the full Will Delay although the session ended")
def test_v5_will_with_zero_session_expiry_and_delay_sent_at_close(broker, raw, watcher):
    """MQTT 5.0 §3.1.3.2.2 / §3.1.2.11.2: with Session Expiry 0 the Session ends at the close,
    so even with a Will Delay the Will is published promptly."""
    c = will_client(raw, broker, V5, will_props={"WillDelayInterval": 30})
    c.abort()
    m = watcher.get(timeout=TIMEOUT)
    assert m.payload == b"gone:willer"
