"""Drain (POST /api/v1/node/drain, and SIGTERM): the node fails readiness,
disconnects its clients with 0x9C "use another server", hands their sessions over, and when it
reports drained no message was lost (QoS 1 at least once, QoS 2 exactly once)."""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

from cluster_helpers import NODE_RECORD, admin_post, await_delivery, background, decode_record, wait_key
from helpers import pprops, wait_for

pytestmark = pytest.mark.drain

RC_USE_ANOTHER_SERVER = 0x9C
CLIENTS = int(os.environ.get("STARLING_TEST_DRAIN_CLIENTS", "5"))
PER_CLIENT = int(os.environ.get("STARLING_TEST_DRAIN_MESSAGES", "200"))
RATE = float(os.environ.get("STARLING_TEST_DRAIN_RATE", "200"))  # messages/s, all clients together
DRAIN_TIMEOUT = float(os.environ.get("STARLING_TEST_DRAIN_TIMEOUT", "60"))


def _persistent():
    return pprops("CONNECT", SessionExpiryInterval=300)


def _drained(node) -> str | None:
    """'drained' state from /api/v1/node, or 'exited 0' if the node exited cleanly after drain."""
    if not node.alive():
        return f"exited {node.proc.returncode}"
    st, body = node.request("GET", "/api/v1/node", timeout=1)
    if st == 200:
        import json
        state = json.loads(body).get("state")
        if state == "drained":
            return "drained"
    return None


def test_drain_moves_clients_without_loss(cluster, paho, measure):
    """5 v5 clients with persistent sessions on n1 receive QoS 1 and QoS 2 streams
    (200 messages each) published at a steady rate on n2 and n3; POST /api/v1/node/drain on n1 ->
    /readyz turns 503, nodes/n1 says draining, every client gets DISCONNECT 0x9C and reconnects to
    n2/n3 (clean start 0, session present 1); once n1 reports drained (no connection, no session
    left), every QoS 1 message arrived at least once and every QoS 2 message exactly once. The
    drain time is printed."""
    c = cluster(3)
    n1, n2, n3 = c
    clients = [paho(n1, f"d{i}", clean=False, props=_persistent()) for i in range(CLIENTS)]
    for i, cl in enumerate(clients):
        cl.subscribe(f"drain/{i}/#", 2)
    p2, p3 = paho(n2, "p2"), paho(n3, "p3")
    for i, cl in enumerate(clients):
        await_delivery(p2, cl, f"drain/{i}/probe")
        await_delivery(p3, cl, f"drain/{i}/probe")

    plan = []  # (publisher, client index, qos, payload)
    for k in range(PER_CLIENT):
        for i in range(CLIENTS):
            qos = 1 + k % 2
            plan.append((p2 if (k // 2) % 2 == 0 else p3, i, qos, f"{i}:{qos}:{k}".encode()))
    acks: list = []

    def publish_all():
        interval = 1.0 / RATE
        t0 = time.monotonic()
        for j, (p, i, qos, payload) in enumerate(plan):
            acks.append((payload, p.publish(f"drain/{i}/q{qos}", payload, qos=qos, wait=False), p))
            delay = t0 + (j + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # steady publish rate (pacing, not synchronisation)

    publisher = background(publish_all)
    wait_for(lambda: sum(cl.messages.qsize() for cl in clients) >= len(plan) // 4, 20, 0.01,
             "a quarter of the stream delivered on n1 before the drain")

    # each client: wait for the server's DISCONNECT, then reconnect elsewhere (like a device would)
    outcome: dict[int, dict] = {}
    lock = threading.Lock()

    def follow(i: int, cl):
        from_server, reason, props = cl.wait_disconnect(timeout=DRAIN_TIMEOUT)
        target = (n2, n3)[i % 2]
        t = time.monotonic()
        for _attempt in range(50):
            try:
                ack = cl.move_to(target, clean=False, expect_success=False)
            except (AssertionError, OSError) as e:
                ack = (False, -1, repr(e))
            if ack[1] == 0:
                break
            time.sleep(0.1)  # client reconnect back-off
        with lock:
            outcome[i] = {"disconnect": (from_server, reason), "server_reference":
                          getattr(props, "ServerReference", None) if props else None,
                          "connack": ack[:2], "to": target.node_id, "reconnect_s": time.monotonic() - t}

    followers = [background(follow, i, cl) for i, cl in enumerate(clients)]
    t_drain = time.monotonic()
    st, body = admin_post(n1, "/api/v1/node/drain")
    assert st is not None and 200 <= st < 300, f"POST /api/v1/node/drain -> {st} {body[:200]!r}"
    wait_for(lambda: n1.status("/readyz") in (503, None), 5, 0.02, "n1 /readyz to turn 503")
    rec = decode_record(c.etcd.get(n1.node_key) or b"", NODE_RECORD)
    print("nodes/n1 while draining:", rec)
    if rec is not None and rec.get("state"):
        assert rec["state"] == "draining", rec

    state = wait_for(lambda: _drained(n1), DRAIN_TIMEOUT, 0.05, "n1 to report drained")
    drain_time = time.monotonic() - t_drain
    measure("drain_time", drain_time)
    print("drain ended as:", state)
    if state == "drained":
        info = n1.info()
        print("n1 after drain:", info)
        assert info["connections"] == 0 and info["sessions"] == 0, info

    for f in followers:
        f.join(DRAIN_TIMEOUT)
        assert f.error is None, f.error
    print("clients:", outcome)
    for i in range(CLIENTS):
        o = outcome[i]
        assert o["disconnect"] == (True, RC_USE_ANOTHER_SERVER), (i, o)
        assert o["connack"] == (True, 0), f"d{i} reconnect to {o['to']}: (session present, rc) = {o['connack']}"

    publisher.join(60)
    assert publisher.error is None, publisher.error
    bad = []
    for payload, info, p in acks:
        code = p.wait_published(info, timeout=20)
        if code >= 0x80:
            bad.append((payload, hex(code)))
    assert not bad, f"publishes refused: {bad[:10]}"

    want = {i: {qos: {f"{i}:{qos}:{k}".encode() for k in range(PER_CLIENT) if 1 + k % 2 == qos}
                for qos in (1, 2)} for i in range(CLIENTS)}
    got = {i: [] for i in range(CLIENTS)}

    def complete():
        for i, cl in enumerate(clients):
            got[i] += [m.payload for m in cl.drain()]
        return all(want[i][1] | want[i][2] <= set(got[i]) for i in range(CLIENTS))

    try:
        wait_for(complete, 20, 0.05, "every message at every client")
    finally:
        for i, cl in enumerate(clients):
            # QoS 2 messages the client got a PUBLISH for and PUBRECed but never saw the PUBREL
            # of (paho delivers QoS 2 on PUBREL): evidence of in-flight state lost in the move
            stuck = {mid: m.payload for mid, m in list(cl.client._in_messages.items())}
            if stuck:
                print(f"d{i}: QoS 2 awaiting PUBREL in the client (mid: payload): {stuck}")
        for i in range(CLIENTS):
            counts = collections.Counter(got[i])
            print(f"d{i}: received {len(got[i])}, missing q1 {len(want[i][1] - set(got[i]))}, missing q2 "
                  f"{len(want[i][2] - set(got[i]))}, dup q1 {sum(1 for p in want[i][1] if counts[p] > 1)}, "
                  f"dup q2 {sum(1 for p in want[i][2] if counts[p] > 1)}; missing "
                  f"{sorted(((want[i][1] | want[i][2]) - set(got[i])), key=lambda p: int(p.split(b':')[2]))[:8]} "
                  f"(k//2 even: published on n2, odd: n3)")
    for i, cl in enumerate(clients):
        got[i] += [m.payload for m in cl.collect_quiet(0.5)]
        counts = collections.Counter(got[i])
        dup_q2 = sorted(p for p in want[i][2] if counts[p] > 1)
        assert not dup_q2, f"d{i}: QoS 2 messages delivered more than once: {dup_q2[:10]}"

    # a drained node accepts no new MQTT clients
    if n1.alive():
        refused = False
        try:
            probe = paho(n1, "late", connect=False)
            ack = probe.connect(expect_success=False, timeout=3)
            refused = ack[1] != 0
            print("CONNACK from drained n1:", hex(ack[1]))
        except (AssertionError, OSError) as e:
            refused = True
            print("connect to drained n1 failed:", e)
        assert refused, "drained n1 accepted a new connection"


def test_sigterm_drains_offline_sessions_to_other_nodes(cluster, paho, measure):
    """By design, drain is what SIGTERM does; persistent sessions whose clients do not
    come back are handed to other nodes: an offline persistent session on n1 with queued QoS 1/2
    messages; SIGTERM n1 -> it exits 0 within the drain bound with its nodes/ and routes/ keys
    gone; the client then connects to n2 (clean start 0): session present 1, queued messages
    delivered exactly once, and new messages too."""
    c = cluster(2)
    n1, n2 = c
    sleeper = paho(n1, "sleeper", clean=False, props=_persistent())
    sleeper.subscribe("sleep/#", 2)
    pub = paho(n2, "pub")
    await_delivery(pub, sleeper, "sleep/probe")
    sleeper.disconnect()
    queued = [f"z{i}".encode() for i in range(10)]
    for i, p in enumerate(queued):
        pub.publish(f"sleep/q{1 + i % 2}", p, qos=1 + i % 2)
    t0 = time.monotonic()
    n1.terminate()
    rc = n1.wait_exit(DRAIN_TIMEOUT)
    measure("sigterm_drain_exit", time.monotonic() - t0)
    assert rc == 0, f"n1 did not exit cleanly after SIGTERM within {DRAIN_TIMEOUT}s (rc {rc})"
    wait_key(c, n1.node_key, present=False, timeout=1)  # released on exit, not left to the lease
    assert c.rel_keys("routes/n1/") == []

    back = paho(n2, "sleeper", clean=False, props=_persistent())
    assert back.session_present is True, "the offline session was not handed over to n2"
    got = back.collect(10)
    # Exactly once each, and in order per topic (MQTT 5.0 §4.6: ordering is per topic; paho
    # hands a QoS 2 message to the application only at PUBREL, so a QoS 1 message on the
    # other topic may overtake it at the client).
    assert sorted(m.payload for m in got) == sorted(queued)
    for topic in ("sleep/q1", "sleep/q2"):
        sent = [p for i, p in enumerate(queued) if f"sleep/q{1 + i % 2}" == topic]
        assert [m.payload for m in got if m.topic == topic] == sent, topic
    pub.publish("sleep/q2", b"after", qos=2)
    assert back.get().payload == b"after"
    assert back.collect_quiet(0.3) == []


def test_drain_server_reference_and_v311_client(cluster, paho):
    """By design, DISCONNECT 0x9C "with a Server Reference when configured": n1
    started with --server-reference; on drain a v5 client gets DISCONNECT 0x9C carrying that
    Server Reference, and a v3.1.1 persistent client (which gets no DISCONNECT) has its
    connection closed; both resume their sessions on n2 with their subscriptions."""
    c = cluster(2, start=False)
    n1, n2 = c
    ref = "n2.example:1883"
    n1.extra_args += ["--server-reference", ref]
    c.start()
    v5 = paho(n1, "ref5", clean=False, props=_persistent())
    v5.subscribe("ref/5", 1)
    v3 = paho(n1, "ref3", version=4, clean=False)
    v3.subscribe("ref/3", 1)
    pub = paho(n2, "pub")
    await_delivery(pub, v5, "ref/5")
    await_delivery(pub, v3, "ref/3")
    st, body = admin_post(n1, "/api/v1/node/drain")
    assert st is not None and 200 <= st < 300, (st, body[:200])
    from_server, reason, props = v5.wait_disconnect(10)
    assert (from_server, reason) == (True, RC_USE_ANOTHER_SERVER)
    assert getattr(props, "ServerReference", None) == ref, props
    from_server3, _reason3, _ = v3.wait_disconnect(10)
    assert from_server3 is False, "a v3.1.1 client must not get a DISCONNECT packet"
    for cl, topic in ((v5, "ref/5"), (v3, "ref/3")):
        ack = cl.move_to(n2, clean=False)
        assert ack[0] is True, f"{cl.client_id}: session present 0 on n2"
        pub.publish(topic, b"after-drain", qos=1)
        assert cl.get().payload == b"after-drain"


def _peer_call(node, method: str, request: bytes = b""):
    import grpc_raw
    res = grpc_raw.call(node.host, node.peer_port, method, request,
                        metadata={"authorization": f"Bearer {node.cluster.peer_token}"})
    return res


def test_drain_and_status_over_grpc(cluster, paho):
    """Issue interface ("the same drain is a gRPC call"): `Peer/Drain` on n1's peer port (with the
    peer token) starts the drain: the call answers state "draining", /readyz turns 503, a v5
    client gets DISCONNECT 0x9C and resumes its session on n2; `Peer/Status` then reports
    "draining" or "drained"."""
    from cluster_helpers import pb_fields
    c = cluster(2)
    n1, n2 = c
    cl = paho(n1, "grpc-drained", clean=False, props=_persistent())
    cl.subscribe("grpcdrain/t", 1)
    status = _peer_call(n1, "Status")
    assert status.ok, status
    assert pb_fields(status.messages()[0])[3][0] == b"serving"

    res = _peer_call(n1, "Drain")
    assert res.ok, res
    assert pb_fields(res.messages()[0])[1][0] in (b"draining", b"drained")
    assert wait_for(lambda: n1.status("/readyz") == 503, 5), "readyz still ready after the Drain call"
    from_server, reason, _ = cl.wait_disconnect(10)
    assert (from_server, reason) == (True, RC_USE_ANOTHER_SERVER)
    assert cl.move_to(n2, clean=False)[0] is True
    status = _peer_call(n1, "Status")
    assert status.ok, status
    assert pb_fields(status.messages()[0])[3][0] in (b"draining", b"drained")


def test_kick_over_grpc(cluster, paho):
    """The peer service's `Peer/Kick` disconnects one client without moving its session: with
    reason 0 the v5 client gets DISCONNECT 0x98 Administrative action and KickResponse.found is
    true; with 0x89 it gets 0x89 Server busy; an unknown client id answers found false; a code a
    server may not send (0x04) is refused with INVALID_ARGUMENT and kicks nobody. The kicked
    client's persistent session stays on the node (session present on reconnect)."""
    from cluster_helpers import pb_fields
    import grpc_raw
    c = cluster(1)
    n1 = c[0]
    victim = paho(n1, "kick-me", clean=False, props=_persistent())
    victim.subscribe("kick/t", 1)
    bystander = paho(n1, "kick-bystander")

    res = _peer_call(n1, "Kick", grpc_raw.pb_bytes(1, "kick-me"))
    assert res.ok, res
    assert pb_fields(res.messages()[0]).get(1) == [1], "KickResponse.found should be true"
    assert victim.wait_disconnect(10)[:2] == (True, 0x98)
    assert victim.move_to(n1, clean=False)[0] is True, "the kicked client's session was not kept"

    res = _peer_call(n1, "Kick", grpc_raw.pb_bytes(1, "kick-me") + grpc_raw.pb_uint(2, 0x89))
    assert res.ok, res
    assert victim.wait_disconnect(10)[:2] == (True, 0x89)

    res = _peer_call(n1, "Kick", grpc_raw.pb_bytes(1, "nobody"))
    assert res.ok, res
    assert pb_fields(res.messages()[0]).get(1) in (None, [0]), "found for an unknown client"

    res = _peer_call(n1, "Kick", grpc_raw.pb_bytes(1, "kick-bystander") + grpc_raw.pb_uint(2, 0x04))
    assert res.grpc_status == 3, f"reason 0x04 should be INVALID_ARGUMENT: {res}"
    assert bystander.publish("kick/t", b"still here", qos=1) == 0
    assert bystander.disconnects.empty(), "a refused Kick disconnected its client anyway"
