"""Idle connections that park (Starling): after ``park_idle_after_ms`` with nothing to do a
connection gives up its task and its socket waits in a shared poller. Everything a connection
must do still happens while parked: mail is delivered, PINGREQ answered, keep-alive enforced,
takeover and shutdown announced, wills published. ``connections_parked`` (admin API) tells
whether a connection is parked. The whole suite also runs with every idle connection parked at
once: ``STARLING_TEST_PARK_IDLE_AFTER_MS=1`` (scripts/test.sh does)."""

from __future__ import annotations

import signal
import time

import pytest

import rawmqtt as r
from helpers import TIMEOUT, wait_for

V311, V5 = 4, 5
VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

pytestmark = pytest.mark.starling_only(reason="parking is Starling's own")


def parked(broker) -> int:
    return broker.counters()["connections_parked"]


def wait_parked(broker, n: int) -> None:
    wait_for(lambda: parked(broker) == n, TIMEOUT, what=f"{n} parked connection(s)")


@pytest.fixture
def parking_broker(broker_factory):
    # 300 ms: quick to park, and long enough that a connection which woke up
    # is seen awake by a test before it parks again.
    return broker_factory(admin=True, park_idle_after_ms=300)


@VERSIONS
def test_parked_subscriber_gets_messages(parking_broker, raw, version):
    """Mail wakes a parked connection: QoS 0 and 1 messages published after the subscriber
    parked are delivered, and the subscriber parks again afterwards."""
    sub = raw(parking_broker, version)
    sub.connect("parked-sub")
    sub.subscribe(1, [("park/#", 1)])
    wait_parked(parking_broker, 1)
    pub = raw(parking_broker, version)
    pub.connect("parked-pub")
    pub.publish("park/0", b"zero", qos=0)
    pub.publish("park/1", b"one", qos=1, pid=7)
    pub.expect(r.PUBACK)
    got = [sub.expect(r.PUBLISH), sub.expect(r.PUBLISH)]
    assert [(p.topic, p.payload, p.qos) for p in got] == [("park/0", b"zero", 0), ("park/1", b"one", 1)]
    sub.puback(got[1].pid)
    wait_parked(parking_broker, 2)


def test_a_subscriber_that_only_receives_does_not_park(parking_broker, raw):
    """Outbound traffic is activity: a QoS 0 subscriber receiving a message every 100 ms (and
    sending nothing) stays awake, as does its publisher; neither parks in 1.5 s with
    park_idle_after_ms = 300."""
    sub = raw(parking_broker, V5)
    sub.connect("receiver")
    sub.subscribe(1, [("stream/t", 0)])
    pub = raw(parking_broker, V5)
    pub.connect("streamer")
    for i in range(15):
        pub.publish("stream/t", str(i).encode())
        assert sub.expect(r.PUBLISH).payload == str(i).encode()
        time.sleep(0.1)  # the stream's own rate, not synchronisation
    assert parking_broker.counters()["parks"] == 0


def test_parked_connection_answers_pingreq_without_waking(broker_factory, raw):
    """PINGREQ is answered by the poller: the connection stays parked (if it had woken up it
    would stay awake for park_idle_after_ms, long after its PINGRESPs)."""
    broker = broker_factory(admin=True, park_idle_after_ms=2000)
    c = raw(broker, V5)
    c.connect("pinger", keepalive=30)
    wait_parked(broker, 1)
    for _ in range(3):
        c.send(r.pingreq() * 2)
        c.expect(r.PINGRESP)
        c.expect(r.PINGRESP)
        assert parked(broker) == 1, "a PINGREQ woke the parked connection"
    # the connection still works as a whole afterwards
    c.subscribe(1, [("ping/t", 0)])
    c.publish("ping/t", b"after pings")
    assert c.expect(r.PUBLISH).payload == b"after pings"


def test_pingreq_followed_by_publish_wakes_the_connection(parking_broker, raw):
    """A PINGREQ and a PUBLISH in one segment: the poller leaves both to the connection."""
    sub = raw(parking_broker, V5)
    sub.connect("mixed-sub")
    sub.subscribe(1, [("mixed/t", 0)])
    c = raw(parking_broker, V5)
    c.connect("mixed")
    wait_parked(parking_broker, 2)
    c.send(r.pingreq() + r.publish("mixed/t", b"with ping"))
    c.expect(r.PINGRESP)
    assert sub.expect(r.PUBLISH).payload == b"with ping"


def test_packet_split_around_parking(parking_broker, raw):
    """The first byte of a PUBLISH wakes a parked connection; the rest, sent after it woke,
    completes the packet."""
    sub = raw(parking_broker, V5)
    sub.connect("split-sub")
    sub.subscribe(1, [("split/t", 0)])
    c = raw(parking_broker, V5)
    c.connect("split")
    wait_parked(parking_broker, 2)
    whole = r.publish("split/t", b"in two parts")
    c.send(whole[:1])
    wait_parked(parking_broker, 1)
    c.send(whole[1:])
    assert sub.expect(r.PUBLISH).payload == b"in two parts"


@VERSIONS
def test_keep_alive_expires_while_parked(parking_broker, raw, version):
    """MQTT-3.1.2-24: a parked client silent for 1.5 x Keep Alive is disconnected (v5: 0x8D)
    and its will is published."""
    watcher = raw(parking_broker, V5)
    watcher.connect("ka-watcher")
    watcher.subscribe(1, [("ka/will", 0)])
    c = raw(parking_broker, version)
    c.connect("ka-silent", keepalive=1, will_topic="ka/will", will_payload=b"silent")
    wait_parked(parking_broker, 2)
    started = time.monotonic()
    packets = c.recv_until_closed(TIMEOUT)
    took = time.monotonic() - started
    if version == V5:
        assert r.disconnect_reason(packets) == r.RC_KEEP_ALIVE_TIMEOUT, packets
    else:
        assert packets == []
    assert took < 3.0, f"keep-alive of 1 s enforced after {took:.2f} s"
    assert watcher.expect(r.PUBLISH).payload == b"silent"


def test_pingreq_while_parked_keeps_the_client_alive(parking_broker, raw):
    """PINGREQs answered by the poller restart the keep-alive: a client that pings every
    0.5 s with Keep Alive 1 stays connected for well beyond 1.5 s."""
    c = raw(parking_broker, V5)
    c.connect("ka-pinger", keepalive=1)
    wait_parked(parking_broker, 1)
    for _ in range(8):
        time.sleep(0.5)  # the client's own ping schedule, not synchronisation
        c.send(r.pingreq())
        c.expect(r.PINGRESP)
    assert parked(parking_broker) == 1


def test_parked_client_dropping_its_socket_publishes_will(parking_broker, raw):
    """A parked client whose socket resets is lost like any other: its will goes out."""
    watcher = raw(parking_broker, V5)
    watcher.connect("drop-watcher")
    watcher.subscribe(1, [("drop/will", 0)])
    c = raw(parking_broker, V5)
    c.connect("dropper", will_topic="drop/will", will_payload=b"dropped")
    wait_parked(parking_broker, 2)
    c.abort()
    assert watcher.expect(r.PUBLISH).payload == b"dropped"
    wait_for(lambda: parking_broker.counters()["connections"] == 1, TIMEOUT, what="one connection")


def test_takeover_of_a_parked_connection(parking_broker, raw):
    """MQTT-3.1.4-3: a new connection with the client id of a parked one takes the session
    over; the parked one is told 0x8E Session taken over."""
    old = raw(parking_broker, V5)
    old.connect("taken", clean=False, props={"SessionExpiryInterval": 60})
    old.subscribe(1, [("taken/t", 1)])
    wait_parked(parking_broker, 1)
    new = raw(parking_broker, V5)
    ack = new.connect("taken", clean=False, props={"SessionExpiryInterval": 60})
    assert ack.session_present is True
    assert r.disconnect_reason(old.recv_until_closed(TIMEOUT)) == r.RC_SESSION_TAKEN_OVER
    new.publish("taken/t", b"to the new one", qos=1, pid=1)
    got = {p.ptype: p for p in (new.recv(), new.recv())}
    assert got[r.PUBLISH].payload == b"to the new one"


def test_inflight_window_across_parking(parking_broker, raw):
    """A subscriber with Receive Maximum 1 parks holding an unacknowledged message; its PUBACK
    wakes it and the next queued message follows."""
    sub = raw(parking_broker, V5)
    sub.connect("window", props={"ReceiveMaximum": 1})
    sub.subscribe(1, [("window/t", 1)])
    pub = raw(parking_broker, V5)
    pub.connect("window-pub")
    for i in range(2):
        pub.publish("window/t", f"m{i}".encode(), qos=1, pid=i + 1)
        pub.expect(r.PUBACK)
    first = sub.expect(r.PUBLISH)
    assert first.payload == b"m0"
    wait_parked(parking_broker, 2)
    sub.puback(first.pid)
    second = sub.expect(r.PUBLISH)
    assert second.payload == b"m1"
    sub.puback(second.pid)


def test_shutdown_wakes_parked_connections(parking_broker, raw):
    """SIGTERM with parked connections: v5 clients get DISCONNECT 0x8B, 3.1.1 clients a close,
    and the broker exits with 0."""
    c5 = raw(parking_broker, V5)
    c5.connect("sd-parked-5")
    c3 = raw(parking_broker, V311)
    c3.connect("sd-parked-3")
    wait_parked(parking_broker, 2)
    parking_broker.send_signal(signal.SIGTERM)
    assert r.disconnect_reason(c5.recv_until_closed(TIMEOUT)) == r.RC_SERVER_SHUTTING_DOWN
    assert c3.recv_until_closed(TIMEOUT) == []
    assert parking_broker.wait_exit(10) == 0
