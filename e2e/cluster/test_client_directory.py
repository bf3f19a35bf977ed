"""The client registry at scale, keeping the takeover guarantee: the home-node client
directory (client_directory = "home", docs/adr/0003) keeps "one session per client id in the
cluster" while membership changes move client ids to new home nodes. Owners register their
sessions again at the new homes; without that, the ids whose home joined or died would be
forgotten and a connect elsewhere would start a fresh session (session present = 0)."""

from __future__ import annotations

import pytest

from cluster_helpers import client_owner, wait_owner
from helpers import pprops, wait_for

pytestmark = pytest.mark.directory

TTL = 2
# Enough ids that every home of 3 nodes gets several (rendezvous hashing spreads them evenly).
IDS = [f"dir-dev-{i}" for i in range(30)]


def _persistent():
    return pprops("CONNECT", SessionExpiryInterval=300)


def _leave_sessions_on(node, paho):
    """Each id gets a persistent session with a subscription on ``node``, then disconnects."""
    for cid in IDS:
        cl = paho(node, cid, clean=False, props=_persistent())
        cl.subscribe(f"dir/{cid}", 1)
        cl.disconnect()


def _resume_all_on(node, paho) -> list[str]:
    """Connects every id to ``node`` with clean start 0; returns the ids that found no session."""
    lost = []
    for cid in IDS:
        cl = paho(node, cid, clean=False, props=_persistent())
        if cl.session_present is not True:
            lost.append(cid)
        cl.disconnect()
    return lost


def test_sessions_survive_a_node_joining(cluster, paho):
    """Scale-up: n3 joins a 2-node cluster and becomes home to about a third of the ids. The
    sessions left on n1 are still found from n3 (and taken over, session present = 1)."""
    c = cluster(2, lease_ttl=TTL)
    n1, n2 = c
    _leave_sessions_on(n1, paho)
    for cid in IDS:
        assert client_owner(n2, cid) == "n1", cid
    n3 = c.add_node("n3", lease_ttl=TTL)
    c.start()
    homed_on_n3 = wait_for(lambda: n3.info().get("directory_entries", 0) > 0, 10, 0.05,
                           "n3 to be home to some of n1's sessions")
    assert homed_on_n3
    lost = _resume_all_on(n3, paho)
    assert lost == [], f"sessions not found after n3 joined: {lost}"
    for cid in IDS:
        assert client_owner(n2, cid) == "n3", cid


def test_sessions_survive_their_home_node_dying(cluster, paho):
    """SIGKILL of n3, home to about a third of the ids whose sessions are on n1: once n3 has left
    the membership (lease TTL), n1 has registered them again at their new homes, and connecting
    each id to n2 takes its session over from n1."""
    c = cluster(3, lease_ttl=TTL)
    n1, n2, n3 = c
    _leave_sessions_on(n1, paho)
    homed_on_n3 = n3.info()["directory_entries"]
    assert homed_on_n3 > 0, "n3 is home to none of the ids: pick more ids"
    n3.kill()
    wait_for(lambda: not c.keys("nodes/n3"), 3 * TTL + 2, 0.05, "n3 to leave the membership")
    for cid in IDS:
        wait_owner(n2, cid, "n1")
    lost = _resume_all_on(n2, paho)
    assert lost == [], f"sessions not found after their home died ({homed_on_n3} homed on n3): {lost}"
