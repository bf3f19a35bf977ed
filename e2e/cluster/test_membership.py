"""Membership: every running node has `nodes/<node>` under its lease; when a
node is SIGKILLed its `nodes/` and `routes/<node>/` entries, and the client directory's entries
for its clients, disappear by themselves within a few lease TTLs, and the other nodes stop forwarding to it."""

from __future__ import annotations

import time

import pytest

from cluster_helpers import (NODE_RECORD, await_delivery, client_owner, decode_record, stays, wait_key,
                             wait_owner)
from helpers import elapse, pprops, wait_for

pytestmark = pytest.mark.membership

TTL = 2


def test_node_keys_exist_while_running(cluster):
    """Every node's key `nodes/<node>` exists while it runs, also after several
    lease TTLs (the lease is kept alive); health, readiness and the node API answer."""
    c = cluster(3, lease_ttl=TTL)
    assert c.rel_keys("nodes/") == ["nodes/n1", "nodes/n2", "nodes/n3"]
    for n in c:
        assert n.status("/healthz") == 200
        assert n.status("/readyz") == 200
        info = n.info()
        for field in ("node", "state", "connections", "sessions", "subscriptions"):
            assert field in info, f"{n.node_id}: /api/v1/node lacks {field!r}: {info}"
        assert info["node"] == n.node_id
        assert info["state"] == "serving", info
        rec = decode_record(c.etcd.get(n.node_key) or b"", NODE_RECORD)
        print(n.node_id, "record:", rec)
        if rec is not None and rec.get("node"):
            assert rec["node"] == n.node_id
            assert rec.get("state") in (None, "", "serving"), rec
    elapse(2.5 * TTL)  # lease keep-alive is a time-based feature: outlive the TTL
    assert c.rel_keys("nodes/") == ["nodes/n1", "nodes/n2", "nodes/n3"]


def test_sigkill_expires_node_routes_and_clients(cluster, paho, measure):
    """SIGKILL of n3 -> nodes/n3, routes/n3/* and the directory entry of its client
    disappear within ~3x the lease TTL (2 s). n3 died serving, so n1 keeps its routes for
    peer_lapse_grace_secs: a publish for n3's subscriber fails (0x80; it cannot reach it) while
    n2's subscriber still gets it. After the grace, publishing on n1 for a topic n3 had
    subscribed works again (prompt PUBACK, no error, nothing counted lost); n3 restarted with
    the same id rejoins and is forwarded to again."""
    c = cluster(3, lease_ttl=TTL, peer_lapse_grace=4)
    n1, n2, n3 = c
    sub3 = paho(n3, "victim-sub", clean=False, props=pprops("CONNECT", SessionExpiryInterval=300))
    sub3.subscribe("m/#", 1)
    sub2 = paho(n2, "live-sub")
    sub2.subscribe("m/#", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, [sub2, sub3], "m/probe")
    assert c.rel_keys("routes/n3/") == ["routes/n3/m/#"]
    wait_owner(n1, "victim-sub", "n3")

    t0 = time.monotonic()
    n3.kill()
    sub3.kill()
    gone = {}

    def all_gone():
        for rel in ("nodes/n3", "routes/n3/"):
            if rel not in gone and not c.keys(rel):
                gone[rel] = time.monotonic() - t0
        if "victim-sub" not in gone and client_owner(n1, "victim-sub") is None:
            gone["victim-sub"] = time.monotonic() - t0
        return len(gone) == 3

    try:
        wait_for(all_gone, 3 * TTL + 1, 0.05, "n3's keys to expire")
    finally:
        print("gone after:", gone, "remaining:", c.rel_keys())
    measure("sigkill_to_keys_gone", max(gone.values()))
    assert c.rel_keys("nodes/") == ["nodes/n1", "nodes/n2"]

    # within the grace: n3's route is kept, so the publish fails for it (not a silent success)
    assert pub.publish("m/x", b"in-grace", qos=1, timeout=3) == 0x80
    # after it: no forwarding to the dead node: n1 drops its link (peers count) and n3's routes,
    # forwards nothing that is lost for it (forward_dropped stays), PUBACK comes promptly, n2
    # still gets the message
    wait_for(lambda: n1.info().get("peers", 1) <= 1, 3, 0.05, "n1 to count 1 peer after n3 left")
    wait_for(lambda: n1.info().get("remote_routes") == 1, 8, 0.05, "n1 to drop n3's kept route")
    dropped_before = n1.info().get("counters", {}).get("forward_dropped", 0)
    for i in range(5):
        t = time.monotonic()
        code = pub.publish("m/x", f"after-{i}".encode(), qos=1, timeout=3)
        assert code < 0x80, f"PUBACK reason {code:#x} after n3 died"
        assert time.monotonic() - t < 1.0, f"PUBACK took {time.monotonic() - t:.2f}s"
    assert [m.payload for m in sub2.collect(6)] == [b"in-grace"] + [f"after-{i}".encode() for i in range(5)]
    assert n1.info().get("counters", {}).get("forward_dropped", 0) == dropped_before, \
        "n1 still tried to forward to the dead n3"
    assert n1.alive() and n2.alive()

    # restart: same node id and ports; it registers again and receives forwarded messages
    n3.restart()
    c.wait_members()
    sub3b = paho(n3, "victim-sub2")
    sub3b.subscribe("m/#", 1)
    await_delivery(pub, sub3b, "m/probe2")
    pub.publish("m/y", b"back", qos=1)
    assert sub3b.get().payload == b"back"


def test_lease_keeps_keys_of_idle_node(cluster, paho):
    """Lease keep-alive: an idle node's route and client keys outlive its lease
    TTL several times over (they are tied to a kept-alive lease, not written once)."""
    c = cluster(2, lease_ttl=TTL)
    s = paho(c[1], "idle")
    s.subscribe("idle/t", 0)
    wait_key(c, c[1].route_key("idle/t"))
    wait_owner(c[0], "idle", "n2")
    assert stays(lambda: c.keys("routes/n2/idle/t") and client_owner(c[0], "idle") == "n2"
                 and c.keys("nodes/n2"), 3 * TTL), c.rel_keys()


def test_new_node_joins_running_cluster(cluster, paho):
    """A node added to a running cluster (scale-up) registers nodes/n3, the
    others learn it: forwarding n1 -> n3 and n3 -> n1 works."""
    c = cluster(2, lease_ttl=TTL)
    n1 = c[0]
    n3 = c.add_node("n3", lease_ttl=TTL)
    c.start()
    assert c.rel_keys("nodes/") == ["nodes/n1", "nodes/n2", "nodes/n3"]
    s3, s1 = paho(n3, "s3"), paho(n1, "s1")
    s3.subscribe("join/t", 1)
    s1.subscribe("join/back", 1)
    p1, p3 = paho(n1, "p1"), paho(n3, "p3")
    await_delivery(p1, s3, "join/t")
    await_delivery(p3, s1, "join/back")
