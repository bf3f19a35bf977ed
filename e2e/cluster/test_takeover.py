"""Takeover across nodes: connecting with a client id already connected (or
with a session) on another node moves the session to the new node (by design: Sessions)."""

from __future__ import annotations

import collections
import time

import pytest

from cluster_helpers import await_delivery, background, client_owner, stays, wait_key, wait_owner
from helpers import pprops, wait_for

pytestmark = pytest.mark.takeover

RC_SESSION_TAKEN_OVER = 0x8E


def _persistent():
    return pprops("CONNECT", SessionExpiryInterval=300)


@pytest.mark.parametrize("client_directory", ["home", "etcd"])
def test_takeover_of_connected_client_across_nodes(cluster, paho, measure, client_directory):
    """"dev1" (v5, clean start 0, session expiry 300) subscribed QoS 1 on n1;
    a stream of QoS 1 messages is published on n3; dev1 connects to n2 with the same id -> the n1
    connection gets DISCONNECT 0x8E, the n2 CONNACK has session present = 1, every message
    published (also while it moved) arrives at least once, duplicates only within the QoS 1
    resend window; the client directory now names n2 and the route moved from n1 to n2. Run
    with each client directory (home nodes, etcd)."""
    c = cluster(3, client_directory=client_directory)
    n1, n2, n3 = c
    old = paho(n1, "dev1", clean=False, props=_persistent())
    old.subscribe("dev/cmd", 1)
    pub = paho(n3, "pub")
    await_delivery(pub, old, "dev/cmd")
    wait_owner(n3, "dev1", "n1")

    want = [f"c{i}".encode() for i in range(150)]

    def stream():
        for p in want:
            code = pub.publish("dev/cmd", p, qos=1, timeout=10)
            assert code < 0x80, f"PUBACK {code:#x} for {p!r}"
            time.sleep(0.01)  # a steady rate (pacing, not synchronisation)

    t = background(stream)
    wait_for(lambda: old.messages.qsize() >= 30, 10, 0.01, "30 messages on n1 before the takeover")
    t_take = time.monotonic()
    new = paho(n2, "dev1", clean=False, props=_persistent())
    measure("takeover_connack", time.monotonic() - t_take)
    assert new.session_present is True, "session did not move to n2 (session present = 0)"
    from_server, reason, _props = old.wait_disconnect()
    assert (from_server, reason) == (True, RC_SESSION_TAKEN_OVER), (from_server, hex(reason))

    t.join(30)
    assert not t.is_alive(), "publisher did not finish"
    assert t.error is None, t.error
    before = [m.payload for m in old.drain()]
    after = []

    def complete():
        after.extend(m.payload for m in new.drain())
        return set(want) <= set(before) | set(after)

    try:
        wait_for(complete, 10, 0.02, "every message across both connections")
    finally:
        missing = sorted(set(want) - set(before) - set(after))
        print(f"on n1: {len(before)}, on n2: {len(after)}, missing: {missing[:20]}")
    after += [m.payload for m in new.collect_quiet(0.3)]
    dups = [p for p, k in collections.Counter(before + after).items() if k > 1]
    print("duplicates (QoS 1 resends):", dups)
    assert len(dups) <= 32, f"more duplicates than an inflight window: {len(dups)}"
    assert set(p for p in after) <= set(want)

    wait_owner(n3, "dev1", "n2")
    wait_key(c, n2.route_key("dev/cmd"))
    wait_key(c, n1.route_key("dev/cmd"), present=False)


def test_takeover_of_offline_session_delivers_queued(cluster, paho):
    """A persistent session left offline on n1 with messages queued for it (QoS 1
    and QoS 2, published on n3 while it was away) is taken over by the same client id connecting
    to n2: session present = 1 and every queued message arrives exactly once, in order per topic,
    followed by new messages."""
    c = cluster(3)
    n1, n2, n3 = c
    dev = paho(n1, "dev2", clean=False, props=_persistent())
    dev.subscribe("dev2/q1", 1)
    dev.subscribe("dev2/q2", 2)
    pub = paho(n3, "pub")
    await_delivery(pub, dev, "dev2/q1")
    dev.disconnect()
    queued = []
    for i in range(10):
        qos = 1 + i % 2
        pub.publish(f"dev2/q{qos}", f"queued{i}".encode(), qos=qos)
        queued.append(f"queued{i}".encode())
    back = paho(n2, "dev2", clean=False, props=_persistent())
    assert back.session_present is True
    got = back.collect(10)
    assert sorted(m.payload for m in got) == sorted(queued), "lost or duplicated queued messages"
    for topic in ("dev2/q1", "dev2/q2"):  # MQTT 5.0 §4.6: order holds per topic (and QoS)
        assert [m.payload for m in got if m.topic == topic] == [
            p for i, p in enumerate(queued) if f"dev2/q{1 + i % 2}" == topic], topic
    await_delivery(pub, back, "dev2/q1")  # the route now points at n2
    pub.publish("dev2/q2", b"fresh", qos=2)
    assert back.get().payload == b"fresh"
    assert back.collect_quiet(0.3) == []


def test_clean_start_elsewhere_discards_session(cluster, paho):
    """MQTT 5.0 §3.1.2.4 across nodes: connecting to n2 with clean start 1 and a
    client id whose session lives on n1 kicks the n1 connection (0x8E) and starts a new session
    (session present = 0); the old subscription does not follow."""
    c = cluster(2)
    n1, n2 = c
    old = paho(n1, "dev3", clean=False, props=_persistent())
    old.subscribe("dev3/t", 1)
    wait_key(c, n1.route_key("dev3/t"))
    new = paho(n2, "dev3", clean=True)
    assert new.session_present is False
    from_server, reason, _ = old.wait_disconnect()
    assert reason == RC_SESSION_TAKEN_OVER
    wait_key(c, n1.route_key("dev3/t"), present=False)
    assert c.rel_keys("routes/n2/") == []


@pytest.mark.parametrize("client_directory", ["home", "etcd"])
def test_concurrent_connects_with_one_client_id(cluster, paho, client_directory):
    """A race across nodes: the same client id connects to n2 and n3 at the
    same moment, 5 times over: each time exactly one connection survives (the other gets 0x8E
    or a refusal), the client directory names the survivor's node, and a message published on n1
    for the session's subscription reaches the survivor exactly once. Run with each client
    directory (home nodes, etcd)."""
    import threading
    c = cluster(3, client_directory=client_directory)
    n1, n2, n3 = c
    first = paho(n1, "racer", clean=False, props=_persistent())
    first.subscribe("race/t", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, first, "race/t")
    first.disconnect()
    for round_ in range(5):
        a = paho(n2, "racer", clean=False, props=_persistent(), connect=False)
        b = paho(n3, "racer", clean=False, props=_persistent(), connect=False)
        go = threading.Barrier(2)
        acks = {}

        def connect(cl):
            go.wait()
            try:
                acks[cl.broker.node_id] = cl.connect(expect_success=False)[:2]
            except AssertionError as e:
                acks[cl.broker.node_id] = repr(e)

        ts = [threading.Thread(target=connect, args=(cl,)) for cl in (a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(15)
        try:
            wait_for(lambda: [a.connected, b.connected].count(True) == 1, 10, 0.05,
                     "exactly one connection to survive")
        except AssertionError as e:
            owner = client_owner(n1, "racer")
            raise AssertionError(f"round {round_}: {e}: CONNACKs (session present, rc) {acks}, still "
                                 f"connected n2={a.connected} n3={b.connected}, directory: racer on {owner}, "
                                 f"sessions n2={n2.info()['sessions']} n3={n3.info()['sessions']}") from None
        winner = a if a.connected else b
        assert stays(lambda: winner.connected and not (a if winner is b else b).connected, 0.5)
        wait_owner(n1, "racer", winner.broker.node_id, timeout=5)
        payload = f"round{round_}".encode()
        wait_for(lambda: _try_deliver(pub, winner, payload), 10, 0.0,
                 f"round {round_}: delivery to the survivor on {winner.broker.node_id}")
        assert winner.collect_quiet(0.3) == []
        winner.disconnect()
        print(f"round {round_}: acks {acks}, survivor {winner.broker.node_id}")


def _try_deliver(pub, sub, payload: bytes) -> bool:
    """Publish QoS 1 and wait briefly for it (the route to the survivor's node may lag)."""
    pub.publish("race/t", payload, qos=1)
    try:
        got = sub.messages.get(timeout=0.3)
    except Exception:
        return False
    extra = sub.collect_quiet(0.2)
    return got.payload == payload and all(m.payload == payload for m in extra)


def test_pending_delayed_will_cancelled_by_resuming_on_other_node(cluster, paho):
    """By design, takeover hands over the pending will; MQTT 5.0 §3.1.3.2.2: a new
    connection to the session before the Will Delay Interval ends means no Will: a client on n1
    with a 2 s will delay loses its connection; it resumes the session on n2 within the delay
    -> the Will is never published (checked on n3 well after the delay); a second client whose
    connection drops and does not come back gets its Will published after the delay."""
    c = cluster(3)
    n1, n2, n3 = c
    watcher = paho(n3, "watcher")
    watcher.subscribe("dwill/#", 1)
    probe = paho(n1, "probe")
    await_delivery(probe, watcher, "dwill/probe")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 2
    mover = paho(n1, "mover", clean=False, props=_persistent(),
                 will={"topic": "dwill/mover", "payload": b"mover-will", "qos": 1, "props": wp})
    stayer = paho(n1, "stayer", clean=False, props=_persistent(),
                  will={"topic": "dwill/stayer", "payload": b"stayer-will", "qos": 1, "props": wp})
    # kill() stops paho's network thread (up to about a second) before it drops the socket, so
    # the stayer goes first: only the mover's own kill counts against its will delay.
    stayer.kill()
    t_stayer = time.monotonic()  # its connection is gone once kill() returns
    t0 = time.monotonic()
    mover.kill()
    back = paho(n2, "mover", clean=False, props=_persistent())
    assert back.session_present is True
    assert time.monotonic() - t0 < 2, "reconnect took longer than the will delay; test inconclusive"
    got = watcher.get(6)  # the stayer's will, after its 2 s delay
    assert (got.topic, got.payload) == ("dwill/stayer", b"stayer-will")
    assert time.monotonic() - t_stayer >= 1.9, "will published before its delay"
    late = watcher.collect_quiet(1.0)
    assert [m.payload for m in late] == [], "the mover's will was published although it came back"


def test_disconnect_of_a_held_back_publisher_counts_when_it_is_taken_over(cluster, paho):
    """MQTT-3.1.2-8 / MQTT-3.14.4-3: a client that sent a normal DISCONNECT has no will
    published. Here its DISCONNECT sits behind PUBLISHes that n1 has stopped reading because the
    peer link to n2 is full (n2 frozen with SIGSTOP: backpressure), when a takeover of its client
    id kicks the connection. The packets that arrived before the kick still count (as they do for
    a publisher that is not held back), so the DISCONNECT is seen and the will is not sent."""
    import os
    import signal

    import rawmqtt as r

    # The etcd directory: the takeover on n1 needs nothing from the frozen n2.
    c = cluster(2, route_sync=True, client_directory="etcd")
    n1, n2 = c
    sink = paho(n2, "held-sink")
    sink.subscribe("held/#", 0)
    witness = paho(n1, "held-witness")
    witness.subscribe("heldwill/#", 0)
    publisher = r.RawClient(n1.host, n1.port, version=5)
    try:
        publisher.connect("held-pub", will_topic="heldwill/p", will_payload=b"will", will_qos=0)
        os.kill(n2.pid, signal.SIGSTOP)
        try:
            chunk = b"".join(r.publish("held/x", b"0123456789", version=5) for _ in range(2000))
            counters = lambda: n1.info()["counters"]  # noqa: E731
            held = lambda: counters()["forward_held_back"] > 0  # noqa: E731
            received = counters()["messages_received"]
            for _ in range(200):  # at most 400,000 small messages, bounded
                publisher.send(chunk)
                received += 2000
                # One chunk at a time, so that little is left unread when n1 stops reading.
                wait_for(lambda: held() or counters()["messages_received"] >= received, 10, 0.005,
                         "n1 to read the chunk or hold the publisher back")
                if held():
                    break
            assert held(), "n1 never held the publisher back"
            publisher.send(r.disconnect(version=5))
            # The takeover kicks the held-back connection.
            paho(n1, "held-pub")
            witness.assert_no_message(1.0)
        finally:
            os.kill(n2.pid, signal.SIGCONT)
    finally:
        publisher.sock.close()
