"""MQTT 3.1 (protocol name "MQIsdp", level 3), still spoken by old devices.

IBM's MQTT V3.1 Protocol Specification; MQTT 3.1.1 §1 lists what 3.1.1 changed. The broker must
accept 3.1 clients and let them exchange messages with 3.1.1 and 5.0 clients.
"""

from __future__ import annotations

import pytest

import rawmqtt as r
from helpers import mosquitto_pub

V31, V311, V5 = 3, 4, 5


@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_v31_publish_subscribe_every_qos(broker, paho, pub_qos):
    """MQTT V3.1 §4.1 QoS levels: a 3.1 client publishes and receives at QoS 0/1/2."""
    sub = paho(broker, "v31-sub", version=V31)
    assert sub.subscribe("v31/q", 2) == [2]
    pub = paho(broker, "v31-pub", version=V31)
    assert pub.publish("v31/q", b"old", qos=pub_qos) == 0
    m = sub.get()
    assert (m.payload, m.qos, m.topic) == (b"old", pub_qos, "v31/q")


@pytest.mark.parametrize("other", [V311, V5], ids=["v311", "v5"])
def test_v31_interoperates_with_newer_versions(broker, paho, other):
    """A 3.1 client and a 3.1.1 / 5.0 client exchange messages both ways through one broker."""
    old = paho(broker, "v31-old", version=V31)
    new = paho(broker, "v31-new", version=other)
    old.subscribe("mix/from-new", 1)
    new.subscribe("mix/from-old", 1)
    new.publish("mix/from-new", b"hello old", qos=1)
    old.publish("mix/from-old", b"hello new", qos=1)
    assert old.get().payload == b"hello old"
    assert new.get().payload == b"hello new"


def test_v31_empty_client_id_is_rejected(broker, raw):
    """MQTT V3.1 §3.1 CONNECT payload: the Client Identifier is 1-23 characters; an empty one is
    answered with CONNACK return code 2 (identifier rejected) and the connection closed."""
    c = raw(broker, V311)  # 3.1 uses the 3.1.1 packet layout without properties
    c.send(r.connect("", version=3, protocol_name="MQIsdp", clean=True))
    ack = c.expect(r.CONNACK)
    assert ack.reason == r.V3_IDENTIFIER_REJECTED
    assert c.recv_until_closed() == []


def test_v31_user_name_and_password_flags_without_the_fields_are_accepted(broker, raw):
    """Old 3.1 clients set the User Name and Password flags with nothing after the Client
    Identifier; as Mosquitto does, a 3.1 CONNECT like that is read as carrying neither (no
    authentication is configured here, so it is accepted) and the client works."""
    c = raw(broker, V311)
    c.send(r.connect("v31-flags", version=3, protocol_name="MQIsdp", flags=0xC2))
    ack = c.expect(r.CONNACK)
    assert ack.reason == 0, f"CONNACK refused: {ack!r}"
    c.send(r.pingreq())
    assert c.expect(r.PINGRESP) is not None


def test_v31_persistent_session_resumes(broker, paho):
    """MQTT V3.1 §3.1 Clean session flag = 0: subscriptions and QoS 1 messages survive a
    disconnect."""
    sub = paho(broker, "v31-persist", version=V31, clean=False)
    sub.subscribe("v31/persist", 1)
    sub.close()
    pub = paho(broker, "v31-persist-pub", version=V31)
    pub.publish("v31/persist", b"kept", qos=1)
    again = paho(broker, "v31-persist", version=V31, clean=False)
    assert again.get().payload == b"kept"


def test_v31_with_mosquitto_clients_and_retained(broker, sub_proc):
    """mosquitto_pub / mosquitto_sub with -V 31: retained message stored and delivered with the
    RETAIN flag to a later 3.1 subscriber (MQTT V3.1 §3.3 Retain)."""
    res = mosquitto_pub(broker, ["-V", "31", "-i", "v31-cli-pub", "-t", "v31/ret", "-m", "r31", "-r", "-q", "1"])
    assert res.returncode == 0, res.stderr
    s = sub_proc(broker, ["-V", "31", "-i", "v31-cli-sub", "-t", "v31/ret", "-C", "1", "-W", "5", "-v"])
    rc, lines = s.finish()
    assert rc == 0
    assert lines == ["v31/ret r31"]
