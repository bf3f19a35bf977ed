"""Forwarding: a publish on one node reaches subscribers on other nodes over the
peer stream, for every QoS and for wildcard filters, once per subscriber, and a QoS 1
publisher's PUBACK arrives."""

from __future__ import annotations

import time

import pytest

from cluster_helpers import await_delivery
from helpers import pprops, prop, wait_for

pytestmark = pytest.mark.forwarding


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_on_n1_reaches_subscriber_on_n2(cluster, paho, qos):
    """Publish on n1 -> subscriber on n2 for QoS 0/1/2: all 50 messages arrive, in
    order (MQTT 5.0 §4.6 ordered topic), at the granted QoS, with payload and user properties
    intact; the publisher's acks (PUBACK / PUBCOMP) all arrive."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, f"sub-q{qos}")
    sub.subscribe("fwd/q", qos)
    pub = paho(n1, f"pub-q{qos}")
    await_delivery(pub, sub, "fwd/q")
    infos = [pub.publish("fwd/q", f"m{i}".encode(), qos=qos, wait=False,
                         props=pprops("PUBLISH", UserProperty=[("i", str(i))]))
             for i in range(50)]
    for info in infos:
        code = pub.wait_published(info)
        assert code < 0x80, f"publish completion reason {code:#x}"
    got = sub.collect(50, timeout=10)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(50)]
    assert {m.qos for m in got} == {qos}
    assert [prop(m, "UserProperty") for m in got[:3]] == [[("i", "0")], [("i", "1")], [("i", "2")]]
    sub.assert_no_message()


def test_wildcard_filters_across_nodes(cluster, paho):
    """`+` and `#` filters on n2 match publishes made on n1 exactly as locally
    (MQTT 5.0 §4.7): each subscriber gets exactly its matching topics."""
    c = cluster(2)
    n1, n2 = c
    plus = paho(n2, "plus")
    plus.subscribe("wc/+/temp", 1)
    hash_ = paho(n2, "hash")
    hash_.subscribe("wc/#", 1)
    mixed = paho(n2, "mixed")
    mixed.subscribe("+/room1/#", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, [plus, hash_, mixed], "wc/room1/temp")
    topics = ["wc/room1/temp", "wc/room1/hum", "wc/a/b/c", "wc", "wc/room2/temp", "other/room1/x"]
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    expect = {
        plus: ["wc/room1/temp", "wc/room2/temp"],
        hash_: ["wc/room1/temp", "wc/room1/hum", "wc/a/b/c", "wc", "wc/room2/temp"],
        mixed: ["wc/room1/temp", "wc/room1/hum", "other/room1/x"],
    }
    for s, want in expect.items():
        assert [m.topic for m in s.collect(len(want))] == want, s.client_id
    for s in expect:
        extra = s.collect_quiet(0.3)
        assert extra == [], f"{s.client_id} got non-matching {[m.topic for m in extra]}"


def test_overlapping_filters_one_copy_v5(cluster, paho):
    """By design, forwarded to a node at most once per publish: a v5 subscriber on
    n2 with two overlapping filters gets a message published on n1 once, at the higher QoS,
    carrying both Subscription Identifiers (as Starling does on one node)."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, "ov")
    sub.subscribe("ov/#", 0, props=pprops("SUBSCRIBE", SubscriptionIdentifier=11))
    sub.subscribe("ov/+/x", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=22))
    pub = paho(n1, "pub")
    await_delivery(pub, sub, "ov/a/x")
    for i in range(10):
        pub.publish("ov/a/x", f"o{i}".encode(), qos=1)
    got = sub.collect(10)
    assert [m.payload for m in got] == [f"o{i}".encode() for i in range(10)]
    assert {m.qos for m in got} == {1}
    assert sorted(prop(got[0], "SubscriptionIdentifier", [])) == [11, 22]
    extra = sub.collect_quiet()
    assert extra == [], f"duplicate copies: {[m.payload for m in extra]}"


def test_subscribers_on_two_nodes_both_receive(cluster, paho):
    """A topic with subscribers on n2 and n3 (and one local on n1) reaches all of
    them, each exactly once."""
    c = cluster(3)
    n1, n2, n3 = c
    subs = [paho(n, f"s-{n.node_id}") for n in (n1, n2, n3)]
    for s in subs:
        s.subscribe("both/t", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, subs, "both/t")
    for i in range(20):
        pub.publish("both/t", f"b{i}".encode(), qos=1)
    for s in subs:
        assert [m.payload for m in s.collect(20)] == [f"b{i}".encode() for i in range(20)], s.client_id
    for s in subs:
        assert s.collect_quiet(0.3) == []


def test_qos1_puback_and_remote_delivery(cluster, paho, measure):
    """QoS 1 publish on n1 whose only subscriber is on n2: the publisher's PUBACK
    arrives with a success reason (not 0x10 "no matching subscribers": there is one, remotely)
    and the remote subscriber gets the message; PUBACK latency printed."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, "remote")
    sub.subscribe("ack/t", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, sub, "ack/t")
    lat = []
    for i in range(20):
        t = time.monotonic()
        code = pub.publish("ack/t", f"a{i}".encode(), qos=1)
        lat.append(time.monotonic() - t)
        assert code == 0x00, f"PUBACK reason {code:#x}"
        assert sub.get().payload == f"a{i}".encode()
    measure("qos1_remote_puback_max", max(lat))


def test_v5_properties_and_retain_flag_cross_node(cluster, paho):
    """ForwardedMessage carries the v5 properties: a message published on n1
    with Payload Format Indicator, Content Type, Response Topic, Correlation Data, User Properties
    and Message Expiry reaches n2's subscriber with all of them (expiry not larger than sent); a
    retained publish reaches a Retain-As-Published subscriber on n2 with RETAIN 1 and a plain one
    with RETAIN 0 (MQTT 5.0 §3.3.1.3, §3.8.3.1)."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, "props")
    sub.subscribe("pr/t", 1)
    rap = paho(n2, "rap")
    rap.subscribe("pr/r", 1, rap=True)
    plain = paho(n2, "plain")
    plain.subscribe("pr/r", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, sub, "pr/t")
    await_delivery(pub, [rap, plain], "pr/r")
    props = pprops("PUBLISH", PayloadFormatIndicator=1, ContentType="application/json",
                   ResponseTopic="pr/reply", CorrelationData=b"\x00\x01corr",
                   UserProperty=[("a", "1"), ("b", "2"), ("a", "3")], MessageExpiryInterval=120)
    pub.publish("pr/t", b'{"x": 1}', qos=1, props=props)
    m = sub.get()
    assert m.payload == b'{"x": 1}'
    assert prop(m, "PayloadFormatIndicator") == 1
    assert prop(m, "ContentType") == "application/json"
    assert prop(m, "ResponseTopic") == "pr/reply"
    assert prop(m, "CorrelationData") == b"\x00\x01corr"
    assert prop(m, "UserProperty") == [("a", "1"), ("b", "2"), ("a", "3")]
    assert 0 < prop(m, "MessageExpiryInterval", 0) <= 120
    pub.publish("pr/r", b"kept", qos=1, retain=True)
    assert (rap.get().retain, plain.get().retain) == (True, False)


def test_small_and_larger_messages_keep_their_order_across_nodes(cluster, paho):
    """n1 gathers a publisher's small forwards and queues them together once it has handled a
    read, while a larger message (or one whose PUBACK waits for n2) goes to the link on its own:
    sent back to back and mixed, they still reach n2's subscriber in the order they were
    published, for each QoS (MQTT 5.0 §4.6: a QoS 0 delivery need not wait for QoS 1 ones held
    by the subscriber's inflight window)."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, "mixed-sub")
    sub.subscribe("mixed/t", 1)
    pub = paho(n1, "mixed-pub")
    await_delivery(pub, sub, "mixed/t")
    sizes = [5, 5, 3000, 5, 40_000, 5, 5, 5, 2100, 5] * 6
    payloads = [f"{i}:".encode() + b"x" * size for i, size in enumerate(sizes)]
    infos = [pub.publish("mixed/t", p, qos=i % 2, wait=False) for i, p in enumerate(payloads)]
    for info in infos:
        assert pub.wait_published(info) < 0x80
    got = sub.collect(len(payloads), timeout=10)
    for qos in (0, 1):
        sent = [p for i, p in enumerate(payloads) if i % 2 == qos]
        received = [m.payload for m in got if m.qos == qos]
        assert [p.split(b":")[0] for p in received] == [p.split(b":")[0] for p in sent], f"QoS {qos}"
        assert received == sent
    sub.assert_no_message()


def test_large_messages_cross_node(cluster, paho):
    """Messages close to the 1 MiB default maximum packet size, published back
    to back on n1 (so that a batch to n2 holds several of them, more than gRPC's default 4 MiB
    message limit together), all reach n2's subscriber intact."""
    c = cluster(2)
    n1, n2 = c
    sub = paho(n2, "big")
    sub.subscribe("big/t", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, sub, "big/t")
    payloads = [bytes([i]) * (900 * 1024) for i in range(8)]
    infos = [pub.publish("big/t", p, qos=1, wait=False) for p in payloads]
    codes = [pub.wait_published(info, timeout=15) for info in infos]
    print("PUBACK reason codes:", [hex(x) for x in codes])
    assert all(x < 0x80 for x in codes), f"PUBACK reason codes {[hex(x) for x in codes]}"
    got: list[bytes] = []

    def all_arrived():
        got.extend(m.payload for m in sub.drain())
        return len(got) >= len(payloads)

    try:
        wait_for(all_arrived, 20, 0.05, "8 large messages at n2")
    except AssertionError:
        # summaries only: the payloads are 900 KiB each
        raise AssertionError(f"n2 got {len(got)} of 8 large messages (first bytes "
                             f"{[p[:1] for p in got]}, forward counters on n1: "
                             f"{ {k: v for k, v in n1.info()['counters'].items() if 'forward' in k} }, "
                             f"on n2: { {k: v for k, v in n2.info()['counters'].items() if 'forward' in k} })") from None
    assert [(len(p), p[:1]) for p in got] == [(len(p), p[:1]) for p in payloads]
    assert got == payloads


def test_will_message_reaches_other_nodes(cluster, paho):
    """A Will is a publish like any other: a client on n1 whose connection
    drops without DISCONNECT has its Will (QoS 1, with properties) delivered to subscribers on
    n2 and n3."""
    c = cluster(3)
    n1, n2, n3 = c
    s2, s3 = paho(n2, "w2"), paho(n3, "w3")
    s2.subscribe("will/t", 1)
    s3.subscribe("will/t", 1)
    probe = paho(n1, "probe")
    await_delivery(probe, [s2, s3], "will/t")
    dying = paho(n1, "dying", will={"topic": "will/t", "payload": b"gone", "qos": 1,
                                    "props": pprops("PUBLISH", UserProperty=[("why", "test")])})
    dying.kill()
    for s in (s2, s3):
        m = s.get()
        assert (m.payload, m.qos, prop(m, "UserProperty")) == (b"gone", 1, [("why", "test")])


def test_flood_across_nodes_is_held_back_not_dropped(cluster, tmp_path, measure):
    """Backpressure, bounded buffers: 10 starling-bench publishers on n1 send
    200,000 QoS 0 messages as fast as they can to one wildcard subscriber on n2. The peer link
    fills faster than it drains; n1 holds the publishers back (stops reading them) instead of
    dropping what does not fit: every message arrives and n1's forward_dropped stays 0. (Before
    backpressure, ~90% of such a flood was dropped at the link.)"""
    import json
    import subprocess

    from cluster_helpers import bench_binary

    # The subscriber's queue must hold what a burst puts in it (a QoS 0 subscriber's queue drops
    # when full, by design): this test is about the peer link.
    c = cluster(2, route_sync=True, max_queued_messages=1_000_000)
    n1, n2 = c
    bench = str(bench_binary())
    total = 10 * 20_000
    ready, sub_json = tmp_path / "ready", tmp_path / "sub.json"
    sub = subprocess.Popen([bench, "sub", "-h", n2.host, "-p", str(n2.port), "-c", "1", "-t", "flood/#",
                            "-q", "0", "--expect", str(total), "--idle-timeout", "10", "--duration", "100",
                            "--ready-file", str(ready), "--json", str(sub_json), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: ready.exists() or sub.poll() is not None, 20), "subscriber not ready"
        assert sub.poll() is None, "starling-bench sub exited early"
        pub = subprocess.run([bench, "pub", "-h", n1.host, "-p", str(n1.port), "-c", "10", "-t", "flood/%i",
                              "-q", "0", "-s", "64", "-i", "0", "-L", "20000", "--duration", "100", "--quiet",
                              "--json", str(tmp_path / "pub.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        assert pub.returncode == 0, pub.stderr[-500:]
        sub.wait(timeout=120)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=10)
    summary = json.loads(sub_json.read_text())
    counters = n1.info()["counters"]
    queue_drops = n2.info()["counters"]["dropped_queue_full"]
    print(f"received {summary['received']} of {total}; n1 held publishers back "
          f"{counters['forward_held_back']} times, dropped {counters['forward_dropped']}; "
          f"n2 queue drops {queue_drops}")
    measure("flood_held_back", counters["forward_held_back"], "times")
    assert counters["forward_dropped"] == 0
    assert queue_drops == 0
    assert summary["received"] == total and summary["lost"] == 0, summary
