"""Routes: `routes/<node>/<filter>` exists exactly while at least one local
subscriber of that filter exists on that node; route propagation delay is bounded."""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest

from cluster_helpers import await_delivery, stays, wait_key
from helpers import elapse, pprops

pytestmark = pytest.mark.routes


def test_subscribe_creates_route_unsubscribe_deletes(cluster, paho):
    """SUBSCRIBE on n2 creates routes/n2/<filter> (also for wildcard filters);
    UNSUBSCRIBE deletes it; nothing is written under n1's or n3's routes."""
    c = cluster(3)
    n2 = c[1]
    s = paho(n2, "rs")
    s.subscribe("r/a/+", 1)
    s.subscribe("r/b/#", 0)
    s.subscribe("r/c", 2)
    for f in ("r/a/+", "r/b/#", "r/c"):
        wait_key(c, n2.route_key(f))
    assert c.rel_keys("routes/") == ["routes/n2/r/a/+", "routes/n2/r/b/#", "routes/n2/r/c"]
    s.unsubscribe("r/a/+")
    wait_key(c, n2.route_key("r/a/+"), present=False)
    s.unsubscribe("r/b/#")
    s.unsubscribe("r/c")
    wait_key(c, n2.route_key("r/b/#"), present=False)
    wait_key(c, n2.route_key("r/c"), present=False)
    assert c.rel_keys("routes/") == []


def test_last_subscriber_leaving_deletes_route(cluster, paho):
    """The last subscriber leaving (clean session disconnect, or a persistent
    session expiring) deletes the route; an offline persistent session keeps it (its messages
    must still reach the node to be queued)."""
    c = cluster(2)
    n2 = c[1]
    clean = paho(n2, "clean-leaver")
    clean.subscribe("leave/clean", 1)
    wait_key(c, n2.route_key("leave/clean"))
    clean.disconnect()
    wait_key(c, n2.route_key("leave/clean"), present=False)

    pers = paho(n2, "persistent-leaver", clean=False, props=pprops("CONNECT", SessionExpiryInterval=2))
    pers.subscribe("leave/persistent", 1)
    wait_key(c, n2.route_key("leave/persistent"))
    pers.disconnect()
    t0 = time.monotonic()
    # still subscribed while the session lives (bounded check: 1 s of its 2 s expiry)
    assert stays(lambda: c.keys("routes/n2/leave/persistent"), 1.0), \
        "route of an offline persistent session vanished before the session expired"
    elapse(max(0.0, 2.0 - (time.monotonic() - t0)))  # session expiry is time-based
    wait_key(c, n2.route_key("leave/persistent"), present=False, timeout=5)


def test_two_subscribers_one_key(cluster, paho):
    """Two subscribers of one filter on one node -> one key; it stays (and
    forwarding to the remaining subscriber works) when the first leaves, and is deleted only when
    both have left."""
    c = cluster(2)
    n1, n2 = c
    a = paho(n2, "sub-a")
    b = paho(n2, "sub-b")
    a.subscribe("two/t", 1)
    b.subscribe("two/t", 1)
    wait_key(c, n2.route_key("two/t"))
    assert c.rel_keys("routes/n2/") == ["routes/n2/two/t"]
    pub = paho(n1, "pub")
    await_delivery(pub, [a, b], "two/t")
    a.unsubscribe("two/t")
    assert stays(lambda: c.keys("routes/n2/two/t"), 1.0), "route deleted while sub-b still subscribed"
    pub.publish("two/t", b"still", qos=1)
    assert b.get().payload == b"still"
    a.assert_no_message()
    b.disconnect()
    wait_key(c, n2.route_key("two/t"), present=False)
    assert c.rel_keys("routes/") == []


def test_route_propagation_delay(cluster, paho, measure):
    """Time from SUBACK on n2 to the first message published on n1 (polled every
    10 ms) reaching n2's subscriber; printed, and asserted under 2 s for each of 5 filters."""
    c = cluster(2)
    n1, n2 = c
    pub = paho(n1, "pub")
    delays = []
    for i in range(5):
        s = paho(n2, f"lat{i}")
        s.subscribe(f"lat/{i}/+", 0)
        t_suback = time.monotonic()
        delays.append(await_delivery(pub, s, f"lat/{i}/x", timeout=5, since=t_suback))
    print("route propagation delays (s):", [round(d, 3) for d in delays])
    measure("route_propagation_median", statistics.median(delays))
    measure("route_propagation_max", max(delays))
    assert max(delays) < 2.0, delays


def test_many_filters_at_once(cluster, paho, measure):
    """By design, route writes are batched into transactions; etcd refuses a
    transaction of more than 128 operations by default: 300 filters subscribed in one
    SUBSCRIBE on n2 all become routes/n2/ keys and all work from n1; unsubscribed in one
    UNSUBSCRIBE, all keys go."""
    c = cluster(2)
    n1, n2 = c
    s = paho(n2, "many")
    filters = [f"many/{i}/+" for i in range(300)]
    t0 = time.monotonic()
    rc, mid = s.client.subscribe([(f, 1) for f in filters])
    assert rc == 0
    codes, _ = s._wait_ack(s._acks, mid, "SUBACK", 10)
    assert codes == [1] * 300, codes[:10]
    want = sorted(f"routes/n2/{f}" for f in filters)
    from helpers import wait_for
    try:
        wait_for(lambda: c.rel_keys("routes/n2/") == want, 10, 0.1, "300 route keys")
    finally:
        print(f"{len(c.keys('routes/n2/'))} of 300 route keys")
    measure("routes_300_written", time.monotonic() - t0)
    pub = paho(n1, "pub")
    await_delivery(pub, s, "many/0/x")
    for i in (1, 150, 299):
        pub.publish(f"many/{i}/x", f"m{i}".encode(), qos=1)
        assert s.get().payload == f"m{i}".encode()
    rc, mid = s.client.unsubscribe(filters)
    assert rc == 0
    s._wait_ack(s._acks, mid, "UNSUBACK", 10)
    wait_for(lambda: c.keys("routes/n2/") == [], 10, 0.1, "route keys to go")


def test_route_sync_suback_means_reachable_from_every_node(cluster, paho, measure):
    """Goal beyond every peer: with route_sync on, a SUBACK on n2 is sent only
    once n1's and n3's route indexes hold the route, so a QoS 1 message published on n1 and on
    n3 at once after the SUBACK reaches the subscriber (PUBACK success, not 0x10 No matching
    subscribers), for 20 fresh filters in a row, a share group, and a second subscriber of a
    filter whose route is still being written. Without route sync these publishes fall inside the
    ~10 ms propagation window and are lost."""
    c = cluster(3, route_sync=True)
    n1, n2, n3 = c
    pubs = [paho(n1, "sync-p1"), paho(n3, "sync-p3")]
    s = paho(n2, "sync-sub")
    suback_times = []
    for i in range(20):
        t0 = time.monotonic()
        assert s.subscribe(f"sync/{i}/+", 1) == [1]
        suback_times.append(time.monotonic() - t0)
        for p in pubs:
            rc = p.publish(f"sync/{i}/x", p.client_id.encode(), qos=1)
            assert rc == 0, f"filter {i}: publish on {p.client_id} after the SUBACK got {rc!r}"
        got = sorted(m.payload for m in s.get_n(2))
        assert got == [b"sync-p1", b"sync-p3"], (i, got)
    measure("route_sync_suback_median", statistics.median(suback_times))
    measure("route_sync_suback_max", max(suback_times))

    member = paho(n2, "sync-member")
    assert member.subscribe("$share/g/syncshare/#", 1) == [1]
    assert pubs[0].publish("syncshare/a", b"shared", qos=1) == 0
    assert member.get().payload == b"shared"

    # Two subscribers of one new filter in quick succession: the second SUBACK waits for the
    # write the first one started, so it too means "reachable".
    first, second = paho(n2, "sync-first"), paho(n2, "sync-second")
    first.client.subscribe("sync/pair", 1)
    assert second.subscribe("sync/pair", 1) == [1]
    assert pubs[1].publish("sync/pair", b"pair", qos=1) == 0
    assert second.get().payload == b"pair"
    assert n2.info()["counters"]["route_sync_timeouts"] == 0


def test_route_sync_does_not_wait_forever_for_a_frozen_node(cluster, paho):
    """/ 9: with route_sync on and n3 frozen (SIGSTOP: a member that cannot
    answer), a SUBACK on n2 still comes, after route_sync_timeout_secs, counted in
    route_sync_timeouts; n1 was confirmed, so a publish there right after the SUBACK arrives."""
    c = cluster(3, route_sync=True, route_sync_timeout=1, lease_ttl=30)
    n1, n2, n3 = c
    pub = paho(n1, "frozen-pub")
    s = paho(n2, "frozen-sub")
    os.kill(n3.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert s.subscribe("frozen/+", 1, timeout=10) == [1]
        took = time.monotonic() - t0
        assert 0.9 <= took < 5.0, f"SUBACK after {took:.2f} s with a 1 s route sync timeout"
        assert pub.publish("frozen/x", b"ok", qos=1) == 0
        assert s.get().payload == b"ok"
        assert n2.info()["counters"]["route_sync_timeouts"] == 1
    finally:
        os.kill(n3.pid, signal.SIGCONT)


def test_route_aggregation_advertises_one_route_for_many_device_filters(cluster, paho):
    """Scale: with route_aggregates = devices/+/cmd/#, 200 per-device filters
    on n2 are one route key, routes/n2/devices/+/cmd/#, not 200; a filter it does not cover keeps
    its own key. A message published on n1 reaches exactly the device it is for (QoS 1, PUBACK
    success); one for a device nobody subscribed is forwarded to n2 and delivered to nobody.
    With route_sync, a new covered filter's SUBACK needs no write and a publish right after it
    arrives. The pattern's key goes when the last covered filter goes."""
    c = cluster(3, route_aggregates="devices/+/cmd/#", route_sync=True)
    n1, n2, _n3 = c
    devices = paho(n2, "devices")
    for i in range(200):
        devices.client.subscribe(f"devices/{i}/cmd/#", 1)
    other = paho(n2, "other")
    other.subscribe("plain/t", 1)
    assert devices.subscribe("devices/last/cmd/#", 1) == [1]  # after the 200 in order
    wait_key(c, n2.route_key("devices/+/cmd/#"))
    wait_key(c, n2.route_key("plain/t"))
    assert c.rel_keys("routes/") == ["routes/n2/devices/+/cmd/#", "routes/n2/plain/t"]

    pub = paho(n1, "commander")
    assert pub.publish("devices/17/cmd/reboot", b"17", qos=1) == 0
    got = devices.get()
    assert (got.topic, got.payload) == ("devices/17/cmd/reboot", b"17")
    assert pub.publish("devices/nobody/cmd/reboot", b"lost", qos=1) == 0
    assert pub.publish("devices/18/cmd/x", b"18", qos=1) == 0
    assert devices.get().payload == b"18", "the message for no device was delivered"

    fresh = paho(n2, "fresh-device")
    assert fresh.subscribe("devices/new/cmd/#", 1) == [1]
    assert pub.publish("devices/new/cmd/hello", b"new", qos=1) == 0
    assert fresh.get().payload == b"new"

    fresh.unsubscribe("devices/new/cmd/#")
    devices.disconnect()
    wait_key(c, n2.route_key("devices/+/cmd/#"), present=False)
    assert c.rel_keys("routes/") == ["routes/n2/plain/t"]
