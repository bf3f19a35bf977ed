"""Retained messages are cluster-wide (etcd `retained/<topic>`): set on one
node, seen by new subscriptions on every node; cleared from any node."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from cluster_helpers import wait_key
from helpers import QUIET, pprops, prop

pytestmark = pytest.mark.retained


def _retained_on(node, paho, client_id: str, topic_filter: str, *, expect: bytes | None,
                 timeout: float = 5.0):
    """Subscribe a fresh client on ``node`` (polling with new subscriptions until ``timeout``,
    because etcd -> node propagation is asynchronous) and return the retained message it gets,
    or assert that none comes once the expected state is reached."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        s = paho(node, f"{client_id}-{attempt}")
        s.subscribe(topic_filter, 1)
        try:
            m = s.messages.get(timeout=QUIET)
        except Exception:
            m = None
        s.close()
        if (expect is not None and m is not None and m.payload == expect) or (expect is None and m is None):
            print(f"{node.node_id}: retained state {expect!r} for {topic_filter!r} seen at subscription "
                  f"attempt {attempt}")
            return m
        if time.monotonic() > deadline:
            got = None if m is None else (m.topic, m.payload, m.retain)
            raise AssertionError(f"on {node.node_id}: expected retained {expect!r} for {topic_filter!r}, "
                                 f"last got {got} (after {attempt} subscriptions in {timeout}s)")


def test_retained_set_on_n1_seen_on_n3_cleared_on_n2(cluster, paho):
    """A retained message published on n1 (acked: PUBACK) -> a subscription made
    afterwards on n3 receives it with RETAIN set (and its properties); `retained/<topic>` exists in
    etcd; cleared with an empty retained payload on n2 -> a new subscriber on n1 gets nothing and
    the key is gone."""
    c = cluster(3)
    n1, n2, n3 = c
    pub1 = paho(n1, "pub1")
    code = pub1.publish("ret/a/t", b"hello", qos=1, retain=True,
                        props=pprops("PUBLISH", ContentType="text/plain", UserProperty=[("k", "v")]))
    assert code < 0x80
    m = _retained_on(n3, paho, "late3", "ret/+/t", expect=b"hello")  # right after the PUBACK
    wait_key(c, c.key("retained/ret/a/t"))
    assert m.retain is True
    assert m.topic == "ret/a/t"
    assert prop(m, "ContentType") == "text/plain"
    assert prop(m, "UserProperty") == [("k", "v")]

    pub2 = paho(n2, "pub2")
    assert pub2.publish("ret/a/t", b"", qos=1, retain=True) < 0x80
    wait_key(c, c.key("retained/ret/a/t"), present=False)
    assert _retained_on(n1, paho, "late1", "ret/#", expect=None) is None
    assert _retained_on(n3, paho, "late3b", "ret/#", expect=None) is None


def test_retained_replaced_from_another_node(cluster, paho):
    """The last retained message wins cluster-wide: set on n1, replaced on n2 ->
    new subscribers on n1 and n2 get the replacement only; a live subscriber on n2 gets the
    n1 publish as a normal (RETAIN 0) forwarded message."""
    c = cluster(2)
    n1, n2 = c
    live = paho(n2, "live")
    live.subscribe("rr/t", 1)
    p1 = paho(n1, "p1")
    p2 = paho(n2, "p2")
    assert p1.publish("rr/t", b"first", qos=1, retain=True) < 0x80
    wait_key(c, c.key("retained/rr/t"))
    assert p2.publish("rr/t", b"second", qos=1, retain=True) < 0x80
    for node in (n1, n2):
        m = _retained_on(node, paho, f"new-{node.node_id}", "rr/t", expect=b"second")
        assert m.retain is True
    # the live subscriber saw "second" (local publish); "first" too if its route was already known
    payloads = [(m.payload, m.retain) for m in live.collect_quiet(0.3)]
    assert (b"second", False) in payloads, payloads
    assert all(r is False for _p, r in payloads), payloads


def test_retained_message_expiry_cluster_wide(cluster, paho):
    """By design, retained/<topic> may carry a lease for message expiry; MQTT 5.0
    §3.3.2.3.3: a retained message with Message Expiry Interval 2 published on n1 is delivered
    on n2 with a remaining expiry <= 2 while it lives; after it expired, new subscribers on n1
    and n2 get nothing."""
    c = cluster(2)
    n1, n2 = c
    pub = paho(n1, "pub")
    t0 = time.monotonic()
    pub.publish("exp/t", b"short-lived", qos=1, retain=True,
                props=pprops("PUBLISH", MessageExpiryInterval=2))
    m = _retained_on(n2, paho, "alive", "exp/t", expect=b"short-lived")
    assert 0 < prop(m, "MessageExpiryInterval", 0) <= 2
    from helpers import elapse
    elapse(max(0.0, 2.5 - (time.monotonic() - t0)))  # message expiry is time-based
    assert _retained_on(n2, paho, "expired2", "exp/t", expect=None) is None
    assert _retained_on(n1, paho, "expired1", "exp/t", expect=None) is None


def test_many_retained_topics_seen_from_another_node(cluster, paho):
    """200 retained messages set on n1 in a burst are all delivered (once each,
    RETAIN set) to a wildcard subscription made afterwards on n2, and all are in etcd."""
    c = cluster(2)
    n1, n2 = c
    pub = paho(n1, "pub")
    want = {f"many/r/{i}": f"v{i}".encode() for i in range(200)}
    infos = [pub.publish(t, p, qos=1, retain=True, wait=False) for t, p in want.items()]
    for info in infos:
        assert pub.wait_published(info, timeout=10) < 0x80
    from helpers import wait_for
    wait_for(lambda: len(c.keys("retained/many/r/")) == 200, 10, 0.1,
             f"200 retained keys (have {len(c.keys('retained/many/r/'))})")
    s = paho(n2, "late")
    s.subscribe("many/r/#", 1)
    got = s.collect(200, timeout=10)
    assert {m.topic: m.payload for m in got} == want
    assert all(m.retain for m in got)
    assert s.collect_quiet(0.3) == []


def test_retained_at_subscribe_never_follows_a_newer_live_message(cluster, paho):
    """MQTT 5.0 §4.6 (ordered topics) and §3.3.1.3: a subscriber must not get a topic's retained
    message after a newer live message of that topic, or its last value is a stale one. With
    route_sync the SUBACK on n2 waits for the other node (milliseconds) while a publisher on n2
    keeps replacing the retained value of order/t with a rising counter: every value the new
    subscriber gets -- live ones before the SUBACK, the retained one, live ones after -- must be
    at least the one before it. (Before the fix the retained value, read at SUBSCRIBE, was queued
    at the SUBACK, behind the live values that came meanwhile.)"""
    c = cluster(2, route_sync=True)
    _n1, n2 = c
    pub = paho(n2, "order-pub")
    stop = threading.Event()
    published = [0]

    def publish_forever():
        while not stop.is_set() and published[0] < 200_000:
            published[0] += 1
            pub.publish("order/t", str(published[0]).encode(), qos=0, retain=True, wait=False)
            time.sleep(0.0002)  # pacing, not synchronisation: a steady stream of updates

    writer = threading.Thread(target=publish_forever, daemon=True)
    writer.start()
    try:
        # Each attempt expects a retained value, so one must be stored first: a message of the
        # stream reaching a probe means one is (the publisher stores before it routes).
        probe = paho(n2, "order-probe")
        probe.subscribe("order/t", 0)
        probe.messages.get(timeout=5)
        probe.close()
        # A new filter each time, so that each SUBACK waits for route sync.
        for attempt, topic_filter in enumerate(["order/t", "order/+", "order/#", "+/t", "+/+"]):
            s = paho(n2, f"order-sub-{attempt}")
            assert s.subscribe(topic_filter, 0) == [0]
            got = []
            until = time.monotonic() + 0.3  # a bounded look: the stream never goes quiet
            while (left := until - time.monotonic()) > 0:
                try:
                    got.append(s.messages.get(timeout=left))
                except queue.Empty:
                    break
            s.close()
            values = [(int(m.payload), m.retain) for m in got if m.topic == "order/t"]
            assert any(retain for _v, retain in values), f"{topic_filter}: no retained message"
            backwards = [(a, b) for a, b in zip(values, values[1:]) if b[0] < a[0]]
            assert not backwards, f"{topic_filter}: (value, retain) went backwards: {backwards[:5]}"
    finally:
        stop.set()
        writer.join(timeout=10)
    assert published[0] > 100, "the publisher did not run"


def test_retained_value_on_the_publishing_node_never_goes_back(cluster, paho):
    """A retained message set on n1 is what n1's new subscriptions get from then on, even while
    etcd still sends back n1's own earlier writes of that topic: a burst of 300 retained values
    (the writer coalesces them into a few etcd writes, whose events come back milliseconds
    later), then a last one acknowledged; every subscription made right after gets that last
    value, not one of the burst coming back from etcd."""
    c = cluster(2)
    n1, _n2 = c
    pub = paho(n1, "echo-pub")
    watcher = paho(n1, "echo-watch")
    for burst in range(5):
        base = burst * 1000
        for i in range(300):
            pub.publish("echo/t", str(base + i).encode(), qos=0, retain=True, wait=False)
        last = base + 300
        assert pub.publish("echo/t", str(last).encode(), qos=1, retain=True) < 0x80
        seen = []
        for _ in range(40):
            # Retain Handling 0: every SUBSCRIBE sends the retained message again.
            assert watcher.subscribe("echo/t", 0) == [0]
            m = watcher.get()
            assert m.retain is True
            seen.append(int(m.payload))
        assert all(v == last for v in seen), f"burst {burst}: after {last} was set, got {seen}"
        watcher.unsubscribe("echo/t")


def test_retained_message_too_large_to_share_stays_on_its_node_and_clears_the_others(cluster, paho):
    """A retained message over 1 MiB (the most etcd takes) is not shared: its node keeps serving
    it -- also after its delete for the other nodes came back through etcd -- and the other
    nodes stop serving the previous, smaller one as current. A later message from another node
    replaces it everywhere."""
    c = cluster(2, max_packet_size=3 * 1024 * 1024)
    n1, n2 = c
    pub1 = paho(n1, "big-pub1")
    assert pub1.publish("big/t", b"small", qos=1, retain=True) < 0x80
    _retained_on(n2, paho, "small2", "big/t", expect=b"small")
    big = b"x" * (1536 * 1024)
    assert pub1.publish("big/t", big, qos=1, retain=True) < 0x80
    wait_key(c, c.key("retained/big/t"), present=False)
    assert _retained_on(n2, paho, "cleared2", "big/t", expect=None) is None
    assert _retained_on(n1, paho, "big1", "big/t", expect=big).retain is True

    pub2 = paho(n2, "big-pub2")
    assert pub2.publish("big/t", b"later", qos=1, retain=True) < 0x80
    _retained_on(n1, paho, "later1", "big/t", expect=b"later")


def _stale_reads(c, paho, rounds: int, prefix: str) -> list:
    """Publishes retained value k on n1 (QoS 1, waiting for the PUBACK), then at once
    subscribes a fresh client on n2 or n3; returns the rounds whose subscriber did not get k
    first."""
    n1, n2, n3 = c
    pub = paho(n1, f"{prefix}-pub")
    stale = []
    for k in range(1, rounds + 1):
        assert pub.publish("rs/t", str(k).encode(), qos=1, retain=True) < 0x80
        node = n2 if k % 2 == 0 else n3
        s = paho(node, f"{prefix}-sub{k}")
        s.subscribe("rs/t", 1)
        m = s.messages.get(timeout=5)
        if m.payload != str(k).encode():
            stale.append((k, m.payload))
        s.close()
    return stale


def test_retained_puback_with_route_sync_is_what_every_node_serves(cluster, paho, measure):
    """A retained PUBACK under route sync means every node serves the value: publish retained value k on n1 with QoS 1, wait for the PUBACK,
    subscribe at once with a fresh client on n2 or n3: without route sync 78 of 100 such
    subscribers got k-1. With route_sync the PUBACK of a retained publish waits (bounded, like
    the SUBACK) until every node's retained index holds the new value: all 100 get k."""
    c = cluster(3, route_sync=True)
    t0 = time.monotonic()
    stale = _stale_reads(c, paho, 100, "sync")
    measure("retained_sync_round", (time.monotonic() - t0) / 100)
    assert stale == [], f"{len(stale)} of 100 subscribers got an older value: {stale[:5]}"
