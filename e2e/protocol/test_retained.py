"""Retained messages (MQTT 3.1.1 §3.3.1.3, MQTT 5.0 §3.3.1.3, §3.8.3.1, §3.3.2.3.3)."""

from __future__ import annotations

import pytest

import rawmqtt as r
from helpers import elapse, pprops, prop

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def sentinel_after_subscribe(sub, topic: str):
    """Publish a live sentinel on ``topic`` from the subscribing client itself (after its SUBACK)
    and return the messages that arrived before it. Retained messages sent because of the
    subscription are sent before any later live message on the same topic."""
    sub.publish(topic, b"sentinel", qos=1)
    return sub.until(b"sentinel")


@both_versions
def test_retained_message_delivered_on_subscribe_with_retain_flag(broker, paho, version):
    """MQTT 3.1.1 §3.3.1.3 MQTT-3.3.1-5, MQTT-3.3.1-6, MQTT-3.3.1-8 / MQTT 5.0 MQTT-3.3.1-5,
    MQTT-3.3.1-9 (Retain Handling 0): a retained message is stored and sent to a new matching
    subscription with RETAIN=1."""
    pub = paho(broker, "pub", version=version)
    pub.publish("ret/a", b"kept", qos=1, retain=True)
    sub = paho(broker, "sub", version=version)
    sub.subscribe("ret/a", 1)
    m = sub.get()
    assert m.payload == b"kept" and m.retain is True and m.qos == 1


@both_versions
def test_retained_message_replaced(broker, paho, version):
    """MQTT 3.1.1 MQTT-3.3.1-5 / MQTT 5.0 MQTT-3.3.1-5: a new retained message replaces the
    previous one for the topic; a new subscriber gets only the latest."""
    pub = paho(broker, "pub", version=version)
    pub.publish("ret/a", b"first", qos=1, retain=True)
    pub.publish("ret/a", b"second", qos=1, retain=True)
    sub = paho(broker, "sub", version=version)
    sub.subscribe("ret/a", 1)
    before = sentinel_after_subscribe(sub, "ret/a")
    assert [(m.payload, m.retain) for m in before] == [(b"second", True)]


@both_versions
def test_retained_message_cleared_by_empty_payload(broker, paho, version):
    """MQTT 3.1.1 §3.3.1.3 MQTT-3.3.1-10, MQTT-3.3.1-11 / MQTT 5.0 MQTT-3.3.1-6, MQTT-3.3.1-7: a
    retained PUBLISH with a zero-byte payload removes the retained message and is not stored."""
    pub = paho(broker, "pub", version=version)
    pub.publish("ret/a", b"kept", qos=1, retain=True)
    pub.publish("ret/a", b"", qos=1, retain=True)
    sub = paho(broker, "sub", version=version)
    sub.subscribe("ret/a", 1)
    assert sentinel_after_subscribe(sub, "ret/a") == []


def test_v311_live_delivery_of_retained_publish_has_retain_zero(broker, paho):
    """MQTT 3.1.1 §3.3.1.3 MQTT-3.3.1-9: a retained PUBLISH forwarded to an already established
    subscription is sent with RETAIN=0."""
    sub = paho(broker, "sub", version=V311)
    sub.subscribe("ret/live", 1)
    pub = paho(broker, "pub", version=V311)
    pub.publish("ret/live", b"live", qos=1, retain=True)
    m = sub.get()
    assert m.payload == b"live" and m.retain is False


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_v5_retain_as_published(broker, paho, rap):
    """MQTT 5.0 §3.8.3.1 / §3.3.1.3 MQTT-3.3.1-12, MQTT-3.3.1-13: with Retain As Published 0 the
    RETAIN flag of a forwarded live message is 0; with 1 it is kept as published."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rap/t", 1, rap=rap)
    pub = paho(broker, "pub", version=V5)
    pub.publish("rap/t", b"retained-live", qos=1, retain=True)
    pub.publish("rap/t", b"plain-live", qos=1, retain=False)
    m1, m2 = sub.get_n(2)
    assert (m1.payload, m1.retain) == (b"retained-live", rap)
    assert (m2.payload, m2.retain) == (b"plain-live", False)


def test_v5_retained_on_subscribe_has_retain_flag_regardless_of_rap(broker, paho):
    """MQTT 5.0 §3.3.1.3 MQTT-3.3.1-9 (and §3.8.3.1): a retained message sent because of a new
    subscription has RETAIN=1 even when Retain As Published is 0."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rap/r", b"stored", qos=1, retain=True)
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rap/r", 1, rap=False)
    m = sub.get()
    assert m.payload == b"stored" and m.retain is True


def test_v5_retain_handling_0_sends_on_every_subscribe(broker, paho):
    """MQTT 5.0 §3.8.3.1 Retain Handling 0, MQTT-3.3.1-9: retained messages are sent at every
    subscribe, including re-subscribing to an existing subscription."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rh/t", b"stored", qos=1, retain=True)
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rh/t", 1, rh=0)
    assert [m.payload for m in sentinel_after_subscribe(sub, "rh/t")] == [b"stored"]
    sub.subscribe("rh/t", 1, rh=0)
    assert [m.payload for m in sentinel_after_subscribe(sub, "rh/t")] == [b"stored"]


def test_v5_retain_handling_1_sends_only_for_new_subscription(broker, paho):
    """MQTT 5.0 §3.8.3.1 Retain Handling 1, MQTT-3.3.1-10: retained messages are sent only if the
    subscription did not already exist."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rh/t", b"stored", qos=1, retain=True)
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rh/t", 1, rh=1)
    assert [m.payload for m in sentinel_after_subscribe(sub, "rh/t")] == [b"stored"]
    sub.subscribe("rh/t", 1, rh=1)
    assert sentinel_after_subscribe(sub, "rh/t") == []


def test_v5_retain_handling_2_never_sends(broker, paho):
    """MQTT 5.0 §3.8.3.1 Retain Handling 2, MQTT-3.3.1-11: retained messages are not sent when
    the subscription is established."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rh/t", b"stored", qos=1, retain=True)
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rh/t", 1, rh=2)
    assert sentinel_after_subscribe(sub, "rh/t") == []


def test_v5_retained_message_expires(broker, paho):
    """MQTT 5.0 §3.3.2.3.3 MQTT-3.3.2-5: a retained message whose Message Expiry Interval (1 s)
    has passed is no longer delivered to new subscribers."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rx/t", b"short-lived", qos=1, retain=True,
                props=pprops("PUBLISH", MessageExpiryInterval=1))
    elapse(2.0)  # let the message expire (time-based feature under test)
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rx/t", 1)
    assert sentinel_after_subscribe(sub, "rx/t") == []


def test_v5_retained_message_expiry_decremented(broker, paho):
    """MQTT 5.0 §3.3.2.3.3 MQTT-3.3.2-6: a retained message with an expiry is delivered with the
    remaining Message Expiry Interval (not more than published)."""
    pub = paho(broker, "pub", version=V5)
    pub.publish("rx/t", b"long-lived", qos=1, retain=True,
                props=pprops("PUBLISH", MessageExpiryInterval=60))
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("rx/t", 1)
    m = sub.get()
    assert m.payload == b"long-lived" and m.retain
    assert 0 < prop(m, "MessageExpiryInterval") <= 60


@both_versions
def test_retained_messages_for_wildcard_subscription(broker, paho, version):
    """MQTT 3.1.1 MQTT-3.3.1-6 / MQTT 5.0 §3.3.1.3: a wildcard subscription receives the
    retained message of every matching topic."""
    pub = paho(broker, "pub", version=version)
    for t in ("rw/a", "rw/b", "rw/c/d", "other/x"):
        pub.publish(t, t.encode(), qos=1, retain=True)
    sub = paho(broker, "sub", version=version)
    sub.subscribe("rw/#", 1)
    before = sentinel_after_subscribe(sub, "rw/sentinel")
    assert sorted(m.payload for m in before) == [b"rw/a", b"rw/b", b"rw/c/d"]
    assert all(m.retain for m in before)


@both_versions
def test_retained_message_qos_downgraded_to_subscription(broker, paho, version):
    """MQTT 3.1.1 §3.8.4 / MQTT 5.0 §3.8.4: a retained message is sent at min(stored QoS,
    granted QoS)."""
    pub = paho(broker, "pub", version=version)
    pub.publish("rq/t", b"q2", qos=2, retain=True)
    sub0 = paho(broker, "sub0", version=version)
    sub0.subscribe("rq/t", 0)
    assert sub0.get().qos == 0
    sub2 = paho(broker, "sub2", version=version)
    sub2.subscribe("rq/t", 2)
    assert sub2.get().qos == 2


def test_retained_message_survives_publisher_disconnect(broker, raw, paho):
    """MQTT 3.1.1 §3.3.1.3 / MQTT 5.0 §3.3.1.3: the retained message is stored by the Server, not
    tied to the publisher's connection."""
    c = raw(broker, V5)
    c.connect("gone")
    c.publish("rs/t", b"left-behind", 1, pid=1, retain=True)
    c.expect(r.PUBACK)
    c.disconnect()
    sub = paho(broker, "sub", version=V311)
    sub.subscribe("rs/t", 1)
    m = sub.get()
    assert m.payload == b"left-behind" and m.retain
