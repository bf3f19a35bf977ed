"""Checks of the harness itself: they need etcd but no cluster-mode broker, so they validate
the fixtures before (and independently of) Starling's cluster mode."""

from __future__ import annotations


import pytest

from cluster_helpers import CLIENT_RECORD, NODE_RECORD, decode_record, pb_fields

pytestmark = pytest.mark.harness


def _put(etcd, key: str, value: str = "v", *extra: str) -> None:
    r = etcd.ctl("put", key, value, *extra)
    assert r.returncode == 0, r.stderr


def test_etcd_fixture_health_and_keys(etcd):
    """Harness: the etcd fixture is healthy (HTTP /health and `etcdctl endpoint health`) and
    `etcd_keys` lists keys under a prefix (and only under it)."""
    assert etcd.healthy()
    r = etcd.ctl("endpoint", "health")
    assert r.returncode == 0 and b"is healthy" in (r.stdout + r.stderr), r
    _put(etcd, "/starling/c1/nodes/n1")
    _put(etcd, "/starling/c1/routes/n1/a/+/b")
    _put(etcd, "/starling/c1/routes/n1/$share/g/x/#")
    _put(etcd, "/starling/c2/nodes/n1")
    assert etcd.keys("/starling/c1/") == ["/starling/c1/nodes/n1", "/starling/c1/routes/n1/$share/g/x/#",
                                          "/starling/c1/routes/n1/a/+/b"]
    assert etcd.keys("/starling/c1/routes/n1/") == ["/starling/c1/routes/n1/$share/g/x/#",
                                                    "/starling/c1/routes/n1/a/+/b"]
    assert etcd.keys("/starling/none/") == []
    assert etcd.get("/starling/c1/nodes/n1") == b"v"
    assert etcd.get("/starling/c1/nodes/n9") is None


def test_etcd_stop_restart_keeps_ports_and_data(etcd):
    """Harness (outage test support): etcd can be killed and restarted on the same ports and
    data dir; data survives, and it is unreachable while down."""
    url = etcd.url
    _put(etcd, "/starling/c/retained/t", "kept")
    etcd.stop()
    assert not etcd.alive() and not etcd.healthy()
    r = etcd.ctl("get", "/starling/c/retained/t")
    assert r.returncode != 0, "etcdctl must fail while etcd is down"
    etcd.start()
    assert etcd.url == url and etcd.starts == 2
    assert etcd.get("/starling/c/retained/t") == b"kept"


def test_lease_expiry_is_observable(etcd):
    """Harness (membership tests): a key put with a 1 s lease disappears by itself within ~3 s
    once nobody keeps the lease alive, and the keys helper sees it go."""
    from helpers import wait_for
    out = etcd.ctl("lease", "grant", "1").stdout.decode()
    lease = out.split()[1]
    _put(etcd, "/starling/c/nodes/gone", "x", "--lease", lease)
    assert etcd.keys("/starling/c/nodes/") == ["/starling/c/nodes/gone"]
    wait_for(lambda: etcd.keys("/starling/c/nodes/") == [], 4.0, 0.05, "leased key to expire")


def test_record_decoding():
    """Harness: etcd values are decoded from protobuf (proto/starling/cluster/v1/peer.proto
    NodeRecord / ClientRecord) or JSON."""
    # NodeRecord{node:"n1", mqtt_endpoint:"127.0.0.1:1", state:"serving"}
    pb = b"\x0a\x02n1" + b"\x12\x0b127.0.0.1:1" + b"\x2a\x07serving"
    assert decode_record(pb, NODE_RECORD) == {"node": "n1", "mqtt_endpoint": "127.0.0.1:1", "state": "serving"}
    assert decode_record(b"\x0a\x02n2\x10\x07", CLIENT_RECORD) == {"node": "n2", "epoch": 7}
    assert decode_record(b'{"node": "n3"}', CLIENT_RECORD) == {"node": "n3"}
    with pytest.raises(ValueError):
        pb_fields(b"\x0a\x05ab")


def test_cluster_factory_reports_missing_cluster_mode(cluster, request):
    """Harness: when the broker cannot start in cluster mode (e.g. a binary without the
    cluster flags), the cluster fixture fails the test with the node's own error, instead of
    hanging or skipping. Passes either way: it reports what the binary does."""
    try:
        c = cluster(1, ready_timeout=5)
    except pytest.fail.Exception as e:
        msg = str(e)
        assert "n1 exited" in msg or "/readyz" in msg, msg
        print("cluster mode unavailable:", msg.splitlines()[0])
        return
    assert c[0].alive()
    print("cluster mode available:", c[0].info())


def test_grpc_raw_client_against_etcd(etcd):
    """Harness (security tests): the hand-made HTTP/2 gRPC caller works against a real gRPC
    server -- etcd's Maintenance/Status on its client port answers OK with a StatusResponse,
    and an unknown method gets a non-OK grpc-status (12 UNIMPLEMENTED)."""
    import grpc_raw
    from cluster_helpers import HOST
    grpc_raw.SERVICE, saved = "/etcdserverpb.Maintenance/", grpc_raw.SERVICE
    try:
        ok = grpc_raw.call(HOST, etcd.client_port, "Status", b"")
        bad = grpc_raw.call(HOST, etcd.client_port, "NoSuchMethod", b"")
    finally:
        grpc_raw.SERVICE = saved
    assert ok.ok and ok.http_status == 200, ok
    fields = pb_fields(ok.messages()[0])
    assert b"3.4" in fields[2][0], fields  # StatusResponse.version
    assert bad.grpc_status == 12 and not bad.messages(), bad
