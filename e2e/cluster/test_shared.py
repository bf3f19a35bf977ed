"""Shared subscriptions across nodes: a message published anywhere goes to
exactly one member of a `$share/<group>/<filter>` group across the whole cluster."""

from __future__ import annotations

import collections

import pytest

from cluster_helpers import await_delivery, wait_for

pytestmark = pytest.mark.shared


def _payloads(msgs) -> list[bytes]:
    return [m.payload for m in msgs]


def test_shared_group_members_on_two_nodes(cluster, paho, measure):
    """`$share/g/sh/t` with one member on n1 and one on n2; 40 QoS 1 messages
    published on n3 -> each delivered exactly once in total, and both members got some. The
    shared subscription is a route of each member's node (by design: shared subscriptions are routes
    too), gone when the member unsubscribes."""
    c = cluster(3)
    n1, n2, n3 = c
    m1 = paho(n1, "member1")
    m2 = paho(n2, "member2")
    m1.subscribe("$share/g/sh/t", 1)
    m2.subscribe("$share/g/sh/t", 1)
    for n in (n1, n2):
        wait_for(lambda n=n: any("sh/t" in k for k in n.route_keys()), 5, 0.05,
                 f"a route key for $share/g/sh/t under routes/{n.node_id}/ (have {c.rel_keys('routes/')})")
    print("shared route keys:", c.rel_keys("routes/"))
    pub = paho(n3, "pub")
    await_delivery(pub, [m1, m2], "sh/t")  # both members reachable from n3
    want = [f"s{i}".encode() for i in range(40)]
    for p in want:
        pub.publish("sh/t", p, qos=1)

    got = {m1: [], m2: []}

    def total():
        for m in got:
            got[m] += _payloads(m.drain())
        return sum(len(v) for v in got.values()) >= 40

    wait_for(total, 10, 0.02, "40 shared messages in total")
    for m in got:
        got[m] += _payloads(m.collect_quiet(0.5))
    everything = got[m1] + got[m2]
    dups = [p for p, k in collections.Counter(everything).items() if k > 1]
    print(f"member1 (n1): {len(got[m1])}, member2 (n2): {len(got[m2])}, duplicates: {dups}")
    measure("shared_share_on_n1", len(got[m1]) / 40, "fraction")
    assert not dups, f"delivered more than once: {dups}"
    assert sorted(everything) == sorted(want)
    assert got[m1] and got[m2], "both members should get some messages"

    m1.unsubscribe("$share/g/sh/t")
    wait_for(lambda: not any("sh/t" in k for k in n1.route_keys()), 5, 0.05,
             f"n1's shared route to go (have {c.rel_keys('routes/')})")


def test_shared_member_and_plain_subscriber_on_one_remote_node(cluster, paho):
    """With ForwardedMessage's plain and shared_groups fields: on n2 a plain
    subscriber and the only member of a shared group each get every message published on n1,
    exactly once; a second group's only member on n1 (local) gets every message once too."""
    c = cluster(2)
    n1, n2 = c
    plain = paho(n2, "plain")
    plain.subscribe("mix/t", 1)
    member = paho(n2, "member")
    member.subscribe("$share/ga/mix/t", 1)
    local_member = paho(n1, "local-member")
    local_member.subscribe("$share/gb/mix/t", 1)
    pub = paho(n1, "pub")
    await_delivery(pub, [plain, member, local_member], "mix/t")
    want = [f"x{i}".encode() for i in range(20)]
    for p in want:
        pub.publish("mix/t", p, qos=1)
    for s in (plain, member, local_member):
        assert _payloads(s.collect(20)) == want, s.client_id
    for s in (plain, member, local_member):
        assert s.collect_quiet(0.3) == [], s.client_id
