"""Shared subscriptions (MQTT 5.0 §4.8.2)."""

from __future__ import annotations

import queue
import time

import pytest

import rawmqtt as r
from helpers import TIMEOUT

V311, V5 = 4, 5


def poll_members(members: dict, until, timeout: float = TIMEOUT) -> None:
    """Drain the members' message queues into ``members[name][1]`` until ``until()`` is true or
    the deadline passes (bounded polling of callback-filled queues)."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        for client, sink in members.values():
            try:
                sink.append(client.messages.get(timeout=0.02).payload)
            except queue.Empty:
                pass


def distribute(broker, paho, member_filter, version, n=20, publish_topic="sh/t"):
    """Two members subscribe ``member_filter``; ``n`` QoS 1 messages are published. Returns the
    payloads each member received (after a quiet period showing nothing else is pending)."""
    m1 = paho(broker, "m1", version=version)
    m2 = paho(broker, "m2", version=version)
    assert m1.subscribe(member_filter, 1) == [1]
    assert m2.subscribe(member_filter, 1) == [1]
    pub = paho(broker, "pub", version=V5)
    infos = [pub.publish(publish_topic, f"m{i}".encode(), qos=1, wait=False) for i in range(n)]
    for info in infos:
        pub.wait_published(info)
    got: dict[str, list[bytes]] = {"m1": [], "m2": []}
    members = {"m1": (m1, got["m1"]), "m2": (m2, got["m2"])}
    poll_members(members, lambda: len(got["m1"]) + len(got["m2"]) >= n)
    # duplicates would arrive now: bounded quiet period
    poll_members(members, lambda: False, timeout=0.3)
    return got


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_shared_subscription_each_message_to_exactly_one_member(broker, paho, version):
    """MQTT 5.0 §4.8.2 (\"each message is sent to only one of the subscribing sessions\"
    of a Shared Subscription): $share/g/sh/t with two members, 20 QoS 1 messages -> 20 deliveries in total,
    no duplicates, both members get some. (Shared subscriptions are a 5.0 feature; the 3.1.1
    case checks the common extension of honouring '$share/' for 3.1.1 clients too.)"""
    got = distribute(broker, paho, "$share/g/sh/t", version)
    everything = got["m1"] + got["m2"]
    assert sorted(everything) == sorted(f"m{i}".encode() for i in range(20)), got
    assert got["m1"] and got["m2"], f"one member got nothing: {got}"


@pytest.mark.starling_only(reason="'$queue/' is a Starling (and EMQX-style) alias; Mosquitto treats it as a plain topic")
def test_queue_prefix_shared_subscription(broker, paho):
    """MQTT 5.0 §4.8.2 (non-standard '$queue/t' alias for '$share/$queue/t' in Starling):
    20 messages each delivered to exactly one of two members, both get some."""
    got = distribute(broker, paho, "$queue/sh/t", V5)
    everything = got["m1"] + got["m2"]
    assert sorted(everything) == sorted(f"m{i}".encode() for i in range(20)), got
    assert got["m1"] and got["m2"], f"one member got nothing: {got}"


def test_shared_and_non_shared_subscribers_both_receive(broker, paho):
    """MQTT 5.0 §4.8.2: a shared subscription does not affect ordinary subscriptions to the same
    topic; the ordinary subscriber receives every message."""
    normal = paho(broker, "normal", version=V5)
    normal.subscribe("sh/t", 1)
    got = distribute(broker, paho, "$share/g/sh/t", V5, n=10)
    assert len(got["m1"]) + len(got["m2"]) == 10
    msgs = normal.get_n(10)
    assert [m.payload for m in msgs] == [f"m{i}".encode() for i in range(10)]


def test_two_share_groups_each_get_every_message(broker, paho):
    """MQTT 5.0 §4.8.2: each Share Name is a separate group; every group receives each message
    once."""
    a = paho(broker, "a", version=V5)
    b = paho(broker, "b", version=V5)
    a.subscribe("$share/ga/sh/t", 1)
    b.subscribe("$share/gb/sh/t", 1)
    pub = paho(broker, "pub", version=V5)
    for i in range(5):
        pub.publish("sh/t", f"m{i}".encode(), qos=1)
    assert [m.payload for m in a.get_n(5)] == [f"m{i}".encode() for i in range(5)]
    assert [m.payload for m in b.get_n(5)] == [f"m{i}".encode() for i in range(5)]


def test_shared_subscription_with_wildcard_filter(broker, paho):
    """MQTT 5.0 §4.8.2: the filter part of '$share/{ShareName}/{filter}' may contain wildcards."""
    m = paho(broker, "m", version=V5)
    m.subscribe("$share/g/sh/+/x", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("sh/a/x", b"a", qos=1)
    pub.publish("sh/b/y", b"no", qos=1)
    pub.publish("sh/c/x", b"sentinel", qos=1)
    assert [x.payload for x in m.until(b"sentinel")] == [b"a"]


def test_unsubscribe_shared_subscription(broker, paho):
    """MQTT 5.0 §4.8.2 / §3.10.4: UNSUBSCRIBE of '$share/g/sh/t' removes that member."""
    m1 = paho(broker, "m1", version=V5)
    m2 = paho(broker, "m2", version=V5)
    m1.subscribe("$share/g/sh/t", 1)
    m2.subscribe("$share/g/sh/t", 1)
    assert m1.unsubscribe("$share/g/sh/t") == [0]
    pub = paho(broker, "pub", version=V5)
    for i in range(6):
        pub.publish("sh/t", f"m{i}".encode(), qos=1)
    assert [x.payload for x in m2.get_n(6)] == [f"m{i}".encode() for i in range(6)]
    m1.assert_no_message(0.3)


def test_shared_qos2_in_flight_stays_with_its_member(broker, raw, paho):
    """MQTT 5.0 §4.8.2 MQTT-4.8.2-4 and MQTT-4.8.2-5: a QoS 2 message sent to a member whose
    connection breaks before the delivery completes is not given to another member; the Server
    completes it with that member when it reconnects (DUP, same Packet Identifier)."""
    props = {"SessionExpiryInterval": 60}
    a = raw(broker, V5)
    a.connect("member-a", clean=False, props=props)
    a.subscribe(1, [("$share/g2/q2/t", 2)])
    pub = paho(broker, "pub", version=V5)
    pub.publish("q2/t", b"once", qos=2)
    sent = a.expect(r.PUBLISH)
    assert sent.payload == b"once" and sent.qos == 2
    b = paho(broker, "member-b", version=V5)
    b.subscribe("$share/g2/q2/t", 2)
    a.abort()  # no PUBREC: the delivery is not complete
    # Reconnecting takes the session over, so the broken connection has been closed (and
    # anything it gave away given) by the time the CONNACK comes.
    a = raw(broker, V5)
    assert a.connect("member-a", clean=False, props=props).session_present
    again = a.expect(r.PUBLISH)
    assert (again.pid, again.payload, again.dup) == (sent.pid, b"once", True), again
    a.pubrec(again.pid)
    assert a.expect(r.PUBREL).pid == again.pid
    a.pubcomp(again.pid)
    b.subscribe("q2/sentinel", 1)
    pub.publish("q2/sentinel", b"sentinel", qos=1)
    assert b.until(b"sentinel") == [], "the other member got the QoS 2 message in flight"


@pytest.mark.starling_only(reason="§4.8.2 SHOULD; Mosquitto 2.0.11 drops in-flight shared messages of a closed session")
def test_shared_inflight_messages_redistributed_when_member_session_ends(broker, raw, paho):
    """MQTT 5.0 §4.8.2: \"If the Client's Session terminates before the Client reconnects, the
    Server SHOULD send the Application Message to another Client that is subscribed to the same
    Shared Subscription.\" A raw member with Receive Maximum 2 that never acknowledges and closes
    (Session Expiry 0): its unacknowledged messages reach the other member."""
    stuck = raw(broker, V5)
    stuck.connect("stuck", clean=True, props={"ReceiveMaximum": 2})
    stuck.subscribe(1, [("$share/g/sh/t", 1)])
    good = paho(broker, "good", version=V5)
    good.subscribe("$share/g/sh/t", 1)
    pub = paho(broker, "pub", version=V5)
    for i in range(10):
        pub.publish("sh/t", f"m{i}".encode(), qos=1)
    held = [stuck.expect(r.PUBLISH)]  # the stuck member got at least one
    try:
        held.append(stuck.recv(0.5))
    except TimeoutError:
        pass
    stuck.abort()
    held_payloads = {p.payload for p in held if p.ptype == r.PUBLISH}
    expected = {f"m{i}".encode() for i in range(10)}
    seen: list[bytes] = []
    poll_members({"good": (good, seen)}, lambda: expected <= set(seen))
    seen = set(seen)
    assert held_payloads <= seen, f"held by the closed member and never redistributed: {held_payloads - seen}"
    assert expected <= seen
