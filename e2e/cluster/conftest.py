"""Fixtures for the Starling cluster end-to-end tests (see README.md).

* ``etcd``: a private single-member etcd per test (starts in ~0.2 s), killed by PID at teardown.
  Missing /usr/bin/etcd fails the test with how to install it; nothing is skipped.
* ``cluster(n=3, lease_ttl=2, peer_token=..., uids=..., **opts)``: starts n starling nodes
  n1..nN in cluster mode on that etcd under a cluster name unique to the test and waits until
  every node is ready and registered. All nodes are killed by PID at teardown; on failure every
  node's log tail and etcd's are printed.
* ``paho(node, client_id, version=5, ...)``: a connected ``ClusterClient`` (the protocol suite's
  paho wrapper), closed at teardown.
* ``partition``: cuts the peer link between two nodes (iptables or network namespaces), restored
  at teardown.
* ``measure(name, value, unit)``: records a measurement, printed in the terminal summary.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "protocol"))  # helpers.py, rawmqtt.py of the protocol suite
sys.path.insert(0, str(HERE))

from cluster_helpers import (  # noqa: E402
    DEFAULT_LEASE_TTL,
    Cluster,
    ClusterClient,
    Etcd,
    HOST,
    READY_TIMEOUT,
    HarnessError,
    IptablesPartition,
    NetnsPartition,
    iptables_available,
    netns_available,
    unique_cluster_name,
)

FEATURES = ("harness", "membership", "routes", "forwarding", "shared", "retained", "takeover", "drain",
            "outage", "partition", "security", "directory", "hardening")

_MEASUREMENTS: list[tuple[str, str, float, str]] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(f) for f in FEATURES):
            raise pytest.UsageError(f"{item.nodeid} has no feature marker (one of {FEATURES})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_report_header(config):
    from helpers import starling_bin
    b = starling_bin()
    if b.exists():
        st = b.stat()
        return (f"starling binary: {b} ({st.st_size} bytes, modified "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}; copied at first use)")
    return f"starling binary: {b} (missing)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _MEASUREMENTS:
        return
    terminalreporter.section("cluster measurements")
    for test, name, value, unit in _MEASUREMENTS:
        terminalreporter.write_line(f"{test}: {name} = {value:.3f} {unit}")


def _failed(request) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, f"rep_{when}", None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def measure(request):
    def record(name: str, value: float, unit: str = "s") -> None:
        print(f"MEASURE {name} = {value:.3f} {unit}")
        _MEASUREMENTS.append((request.node.name, name, value, unit))
    return record


@pytest.fixture
def etcd(request, tmp_path):
    try:
        e = Etcd(tmp_path).start()
    except HarnessError as err:
        pytest.fail(str(err), pytrace=False)
    yield e
    e.kill()
    if _failed(request):
        print(f"\n----- etcd log ({e.url}, started {e.starts}x) -----\n{e.log_tail(30)}")


@pytest.fixture
def cluster(request, tmp_path, etcd):
    """``cluster(n=3, lease_ttl=2, peer_token="auto"|None|str, uids={i: uid}, start=True,
    extra_args=(), **opts)`` -> started Cluster. ``opts`` are node options (protocol suite
    names such as max_inflight, plus lease_ttl, log_level)."""
    made: list[Cluster] = []

    def make(n: int = 3, *, lease_ttl: int = DEFAULT_LEASE_TTL, peer_token: str | None = "auto",
             uids: dict[int, int] | None = None, hosts: dict[int, str] | None = None,
             netns: dict[int, str] | None = None, start: bool = True, wait_members: bool = True,
             ready_timeout: float = READY_TIMEOUT, extra_args=(), **opts) -> Cluster:
        name = unique_cluster_name(request.node.name)
        if peer_token == "auto":
            peer_token = "tok-" + os.urandom(12).hex()
        workdir = tmp_path / f"cluster{len(made)}"
        workdir.mkdir()
        c = Cluster(etcd, workdir, name, peer_token)
        made.append(c)
        for i in range(n):
            c.add_node(uid=(uids or {}).get(i), host=(hosts or {}).get(i, HOST), netns=(netns or {}).get(i),
                       extra_args=extra_args, lease_ttl=lease_ttl, **opts)
        if start:
            try:
                c.start(ready_timeout, wait_members=wait_members)
            except HarnessError as err:
                pytest.fail(str(err), pytrace=False)
        return c

    yield make
    for c in made:
        c.kill_all()
    if _failed(request):
        for c in made:
            for node in c.nodes:
                print(f"\n----- {node.node_id} log (cluster {c.name}, mqtt {node.port}, peer "
                      f"{node.peer_port}, admin {node.admin_port}) -----\n{node.log_tail(120)}")
            try:
                print(f"\n----- etcd keys under {c.prefix} -----\n" + "\n".join(c.rel_keys()))
            except Exception as e:  # etcd may be down in an outage test
                print(f"(etcd keys unavailable: {e})")


@pytest.fixture
def paho():
    """``paho(node, client_id, version=5|4, clean=..., props=..., connect=True)`` -> ClusterClient."""
    clients: list[ClusterClient] = []

    def make(node, client_id: str = "", version: int = 5, **kw) -> ClusterClient:
        c = ClusterClient(node, client_id, version, connect=False,
                          **{k: v for k, v in kw.items() if k not in ("connect", "expect_success")})
        clients.append(c)
        if kw.get("connect", True):
            c.connect(expect_success=kw.get("expect_success", True))
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def partition(etcd):
    """A way to cut the peer link between two nodes: network namespaces (iproute2; exact, and
    preferred) when they can be made, else iptables (owner + connmark match);
    STARLING_TEST_PARTITION=netns|iptables forces one. Both need root. Fails with what to
    install when neither works. Use ``cluster(3, **partition.node_options())``."""
    want = os.environ.get("STARLING_TEST_PARTITION", "auto")
    if want not in ("auto", "netns", "iptables"):
        pytest.fail(f"STARLING_TEST_PARTITION must be auto, netns or iptables, not {want!r}", pytrace=False)
    why_ns = netns_available() if want in ("auto", "netns") else "not chosen"
    path = iptables_available() if want == "iptables" or (want == "auto" and why_ns) else None
    if why_ns is None:
        try:
            p = NetnsPartition(etcd).setup()
        except HarnessError as e:
            pytest.fail(f"network namespace setup failed: {e}", pytrace=False)
    elif path is not None:
        p = IptablesPartition(path, etcd)
    elif want == "netns":
        pytest.fail(f"STARLING_TEST_PARTITION=netns but {why_ns}", pytrace=False)
    elif want == "iptables":
        pytest.fail("STARLING_TEST_PARTITION=iptables but no working iptables (as root): "
                    "apt-get install iptables", pytrace=False)
    else:
        pytest.fail("partition tests need root and either network namespaces (iproute2: "
                    f"{why_ns}) or iptables (apt-get install iptables; not usable here)", pytrace=False)
    print(f"partition backend: {p.kind}")
    yield p
    p.close()
