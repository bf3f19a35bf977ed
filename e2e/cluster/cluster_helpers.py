"""Process management for the Starling cluster end-to-end tests.

* ``Etcd``: a single-member etcd (Debian's ``/usr/bin/etcd``) on free loopback ports with a
  private data dir; it can be stopped (SIGKILL, for outages) and restarted on the same ports and
  data dir.
* ``Node``: one ``starling`` process in cluster mode (``--etcd``), with its MQTT, peer (gRPC) and
  admin (HTTP) ports; it can be killed (SIGKILL), terminated (SIGTERM) and restarted with the
  same node id and ports. ``Node`` has ``host``/``port`` so that the protocol suite's
  ``PahoClient`` connects to it unchanged.
* ``Cluster``: n nodes (``n1``, ``n2``, ...) sharing one etcd under a cluster name unique to the
  test.
* ``ClusterClient``: the protocol suite's paho wrapper, plus probe messages kept apart from the
  messages a test counts, and ``move_to(node)`` to reconnect the same paho client (and so the
  same QoS 2 receive state) to another node.

Every wait is bounded (``wait_for`` from the protocol suite); nothing sleeps to synchronise.
Every process is killed by PID.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable

from helpers import HOST, QUIET, STARLING_FLAGS, TIMEOUT, PahoClient, _fmt, starling_bin, wait_for

ETCD_BIN = os.environ.get("STARLING_TEST_ETCD", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("STARLING_TEST_ETCDCTL", "/usr/bin/etcdctl")
# How long a node may take from exec to /readyz == 200 (debug builds are slow to start).
READY_TIMEOUT = float(os.environ.get("STARLING_TEST_READY_TIMEOUT", "20"))
# How readiness is judged: "admin" (GET /readyz == 200, the contract) or "mqtt" (the MQTT port
# accepts and nodes/<id> is in etcd: only to run the other tests against a broker whose admin
# HTTP listener does not exist yet).
READINESS = os.environ.get("STARLING_TEST_READINESS", "admin")
# Lease TTL given to the brokers unless a test asks for another one.
# The admin API token every test node is started with (--admin-token).
ADMIN_TOKEN = "cluster-test-admin-token"
DEFAULT_LEASE_TTL = int(os.environ.get("STARLING_TEST_LEASE_TTL", "2"))
# Payload prefix of probe messages (route readiness, propagation delay).
PROBE = b"\x00probe:"


_PORTS_GIVEN: set[int] = set()


def stable_port() -> int:
    """A free loopback port outside the ephemeral range (no connect() can be handed it), never
    handed out before in this run (two nodes picking the same one before either binds it)."""
    low, _high = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _PORTS_GIVEN:
            continue
        _PORTS_GIVEN.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


class HarnessError(AssertionError):
    """A process of the harness could not be started or did not become ready."""


# ---------------------------------------------------------------------------
# etcd


class Etcd:
    """A single-member etcd cluster on 127.0.0.1."""

    def __init__(self, workdir: Path):
        if not Path(ETCD_BIN).exists():
            raise HarnessError(f"etcd not found at {ETCD_BIN}: apt-get install etcd-server "
                               "(or set STARLING_TEST_ETCD)")
        if not Path(ETCDCTL_BIN).exists():
            raise HarnessError(f"etcdctl not found at {ETCDCTL_BIN}: apt-get install etcd-client "
                               "(or set STARLING_TEST_ETCDCTL)")
        self.workdir = workdir
        self.data_dir = workdir / "etcd-data"
        self.log_path = workdir / "etcd.log"
        # etcd is stopped and restarted on the same ports (outage tests): take them below the
        # kernel's ephemeral range, so that no outgoing connection can grab one meanwhile.
        self.client_port = stable_port()
        self.peer_port = stable_port()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0
        # another local address etcd also listens on (for nodes in a network namespace); it
        # takes effect at the next (re)start
        self.extra_host: str | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def node_url(self) -> str:
        """The endpoint given to the brokers."""
        return f"http://{self.extra_host}:{self.client_port}" if self.extra_host else self.url

    def _cmd(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        return [
            ETCD_BIN, "--name", "e2e", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url + (f",{self.node_url}" if self.extra_host else ""),
            "--advertise-client-urls", self.node_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"e2e={peer}", "--initial-cluster-state", "new",
            # fast settings for tests: quick election, small snapshot interval
            "--heartbeat-interval", "25", "--election-timeout", "250",
            "--snapshot-count", "10000",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]

    def start(self, timeout: float = 15.0) -> "Etcd":
        assert not self.alive(), "etcd already running"
        self._log = open(self.log_path, "ab")
        cmd = self._cmd()
        self._log.write(f"$ {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        self.starts += 1
        try:
            wait_for(self._healthy_or_dead, timeout, 0.02, "etcd /health")
        except AssertionError:
            self.kill()
            raise HarnessError(f"etcd not healthy within {timeout}s\n{self.log_tail()}") from None
        if not self.alive():
            raise HarnessError(f"etcd exited with {self.proc.returncode} during startup\n{self.log_tail()}")
        return self

    def _healthy_or_dead(self) -> bool:
        return not self.alive() or self.healthy()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (an outage: no graceful shutdown); the data dir is kept."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    stop = kill

    def restart(self, timeout: float = 15.0) -> "Etcd":
        self.kill()
        return self.start(timeout)

    def ctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run([ETCDCTL_BIN, "--endpoints", self.url, "--command-timeout=3s", *args],
                              capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)

    def keys(self, prefix: str) -> list[str]:
        """``etcdctl get --prefix --keys-only`` as a sorted list of keys."""
        r = self.ctl("get", "--prefix", "--keys-only", "-w", "json", prefix)
        if r.returncode != 0:
            raise AssertionError(f"etcdctl get --prefix {prefix} failed: {r.stderr.decode(errors='replace')}")
        data = json.loads(r.stdout or b"{}")
        return sorted(base64.b64decode(kv["key"]).decode(errors="replace") for kv in data.get("kvs", []))

    def get(self, key: str) -> bytes | None:
        r = self.ctl("get", "-w", "json", key)
        if r.returncode != 0:
            raise AssertionError(f"etcdctl get {key} failed: {r.stderr.decode(errors='replace')}")
        kvs = json.loads(r.stdout or b"{}").get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def lease_of(self, key: str) -> int | None:
        """The lease id a key is attached to (None: no key, 0: no lease)."""
        r = self.ctl("get", "-w", "json", key)
        if r.returncode != 0:
            raise AssertionError(f"etcdctl get {key} failed: {r.stderr.decode(errors='replace')}")
        kvs = json.loads(r.stdout or b"{}").get("kvs", [])
        return int(kvs[0].get("lease", 0)) if kvs else None

    def revoke(self, lease: int) -> None:
        r = self.ctl("lease", "revoke", format(lease, "x"))
        if r.returncode != 0:
            raise AssertionError(f"etcdctl lease revoke {lease:x} failed: {r.stderr.decode(errors='replace')}")

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)


# ---------------------------------------------------------------------------
# broker nodes

_BIN_SNAPSHOT: Path | None = None


def broker_binary() -> Path:
    """The starling binary for this test run: a copy of STARLING_BIN taken at first use, so that
    a rebuild during the run (cargo replaces the file) neither breaks a test nor mixes two broker
    versions in one run. STARLING_TEST_COPY_BIN=0 uses the binary in place."""
    global _BIN_SNAPSHOT
    src = starling_bin()
    if os.environ.get("STARLING_TEST_COPY_BIN", "1") == "0":
        return src
    if _BIN_SNAPSHOT is None:
        # a rebuild in progress removes the file for a moment: wait for it (bounded)
        deadline = time.monotonic() + 60
        while not src.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not src.exists():
            raise HarnessError(f"Starling binary not found at {src}: run `cargo build --bin starling` "
                               "(or set STARLING_BIN)")
        import tempfile
        d = Path(tempfile.mkdtemp(prefix="starling-e2e-bin-"))
        os.chmod(d, 0o755)  # nodes may run under other uids (partition test)
        dst = d / "starling"
        shutil.copy2(src, dst)
        _BIN_SNAPSHOT = dst
        import atexit
        atexit.register(shutil.rmtree, d, True)
    return _BIN_SNAPSHOT

def bench_binary() -> Path:
    """starling-bench (the workspace's load tool), for tests that need more load than paho
    gives: STARLING_BENCH_BIN, or target/debug/starling-bench next to the broker binary."""
    explicit = os.environ.get("STARLING_BENCH_BIN")
    path = Path(explicit) if explicit else starling_bin().parent / "starling-bench"
    if not path.exists():
        raise HarnessError(f"starling-bench not found at {path}: run `cargo build -p starling-bench` "
                           "(or set STARLING_BENCH_BIN)")
    return path


# extra options accepted by Node besides the protocol suite's STARLING_FLAGS
CLUSTER_FLAGS = {
    "lease_ttl": "--lease-ttl-secs",
    "route_sync": "--route-sync",
    "route_sync_timeout": "--route-sync-timeout-secs",
    "route_aggregates": "--route-aggregate",
    "client_directory": "--client-directory",
    "peer_lapse_grace": "--peer-lapse-grace-secs",
}


class Node:
    """One starling process in cluster mode."""

    def __init__(self, cluster: "Cluster", node_id: str, workdir: Path, opts: dict[str, Any],
                 extra_args: list[str], uid: int | None = None, host: str = HOST,
                 netns: str | None = None):
        self.cluster = cluster
        self.node_id = node_id
        self.host = host      # every listener binds this address
        self.netns = netns    # run inside this network namespace (ip netns exec)
        self.workdir = workdir
        self.opts = dict(opts)
        self.extra_args = list(extra_args)
        self.uid = uid
        self.port = 0          # MQTT
        self.peer_port = 0     # gRPC
        self.admin_port = 0    # HTTP
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{node_id}.log"
        self._log = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<Node {self.node_id} mqtt={self.port} peer={self.peer_port} admin={self.admin_port}>"

    # -- command line ----------------------------------------------------------------
    def cmd(self) -> list[str]:
        binary = broker_binary()
        c = self.cluster
        h = self.host
        cmd = ["ip", "netns", "exec", self.netns] if self.netns else []
        cmd += [
            str(binary),
            "--node-id", self.node_id,
            "--cluster", c.name,
            "--etcd", c.etcd.node_url,
            "--listen", f"{h}:{self.port}",
            "--peer-listen", f"{h}:{self.peer_port}",
            "--peer-advertise", f"{h}:{self.peer_port}",
            "--admin-listen", f"{h}:{self.admin_port}",
        ]
        if c.peer_token:
            cmd += ["--peer-token", c.peer_token]
        cmd += ["--admin-token", ADMIN_TOKEN]
        opts = dict(self.opts)
        if "log_level" not in opts and os.environ.get("STARLING_TEST_LOG_LEVEL"):
            opts["log_level"] = os.environ["STARLING_TEST_LOG_LEVEL"]
        if "park_idle_after_ms" not in opts and os.environ.get("STARLING_TEST_PARK_IDLE_AFTER_MS"):
            opts["park_idle_after_ms"] = int(os.environ["STARLING_TEST_PARK_IDLE_AFTER_MS"])
        for name, value in opts.items():
            flag = CLUSTER_FLAGS.get(name) or STARLING_FLAGS.get(name)
            if flag is None:
                raise ValueError(f"unknown node option {name!r}")
            cmd += [flag, _fmt(value)]
        return cmd + self.extra_args

    # -- lifecycle ---------------------------------------------------------------------
    def spawn(self, new_ports: bool) -> None:
        """Start the process (without waiting for readiness)."""
        assert not self.alive(), f"{self.node_id} already running"
        if new_ports or not self.port:
            # Below the ephemeral range: a port picked from it can be taken by any outgoing
            # connection (peer links, etcd clients, paho) before the node binds it.
            self.port, self.peer_port, self.admin_port = stable_port(), stable_port(), stable_port()
        cmd = self.cmd()
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n$ {' '.join(cmd)}\n".encode())
        self._log.flush()
        kw: dict[str, Any] = {"env": dict(os.environ, NO_COLOR="1")}  # plain logs
        if self.uid is not None:
            # a uid of its own so that iptables' owner match can cut this node's traffic only
            kw.update(user=self.uid, group=self.uid)
        cwd = self.workdir if self.uid is None else "/"  # pytest's tmp dirs are 0700
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, **kw)
        self.starts += 1

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Node":
        """Wait until GET /readyz is 200; raise with the log tail if the process exits first."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise HarnessError(self._exit_explanation())
            if READINESS == "mqtt":
                last = self._mqtt_ready()
                if last:
                    return self
            else:
                last = self.status("/readyz")
                if last == 200:
                    return self
            time.sleep(0.05)
        raise HarnessError(f"{self.node_id}: /readyz not 200 within {timeout}s (last: {last})\n"
                           f"{self.log_tail(60)}")

    def _mqtt_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        return bool(self.cluster.etcd.keys(self.node_key))

    def _exit_explanation(self) -> str:
        rc = self.proc.returncode if self.proc else None
        tail = self.log_tail(40)
        hint = ""
        if re.search(r"unexpected argument|unrecognized|Found argument", tail):
            hint = (" -- this starling binary rejects the cluster flags: cluster mode is not "
                    "built yet (or the binary is stale: cargo build --bin starling)")
        return f"{self.node_id} exited with {rc} during startup{hint}\n{tail}"

    def start(self, timeout: float = READY_TIMEOUT) -> "Node":
        """Start (first time: on free ports, retried if a port was taken meanwhile) and wait until
        ready. A restart keeps the node id and ports."""
        first = self.starts == 0
        for attempt in range(3):
            self.spawn(new_ports=first and attempt > 0)
            try:
                return self.wait_ready(timeout)
            except HarnessError:
                if first and not self.alive() and "in use" in self.log_tail(20).lower() and attempt < 2:
                    continue
                self.kill()
                raise
        raise AssertionError("unreachable")

    restart = start

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def terminate(self) -> None:
        """SIGTERM by PID (does not wait)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close_log()
        return rc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 80) -> str:
        return _tail(self.log_path, n)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- admin HTTP ---------------------------------------------------------------------
    def admin_url(self, path: str) -> str:
        return f"http://{self.host}:{self.admin_port}{path}"

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 3.0) -> tuple[int | None, bytes]:
        """(status, body); status None if the connection failed. Every call carries the admin
        token, and a POST says its body is JSON, as the admin API asks."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.admin_url(path), data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return None, b""

    def status(self, path: str) -> int | None:
        return self.request("GET", path, timeout=1.0)[0]

    def info(self) -> dict:
        """GET /api/v1/node as JSON (asserts 200)."""
        st, body = self.request("GET", "/api/v1/node")
        assert st == 200, f"{self.node_id}: GET /api/v1/node -> {st} {body[:200]!r}"
        return json.loads(body)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- etcd keys owned by this node ---------------------------------------------------------
    @property
    def node_key(self) -> str:
        return self.cluster.key(f"nodes/{self.node_id}")

    def route_key(self, topic_filter: str) -> str:
        return self.cluster.key(f"routes/{self.node_id}/{topic_filter}")

    def route_keys(self) -> list[str]:
        return self.cluster.keys(f"routes/{self.node_id}/")


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class Cluster:
    """n nodes under one cluster name in one etcd."""

    def __init__(self, etcd: Etcd, workdir: Path, name: str, peer_token: str | None):
        self.etcd = etcd
        self.workdir = workdir
        self.name = name
        self.peer_token = peer_token
        self.nodes: list[Node] = []

    @property
    def prefix(self) -> str:
        return f"/starling/{self.name}/"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def keys(self, rel_prefix: str = "") -> list[str]:
        return self.etcd.keys(self.prefix + rel_prefix)

    def rel_keys(self, rel_prefix: str = "") -> list[str]:
        """Keys under ``rel_prefix`` relative to the cluster prefix (for readable messages)."""
        return [k[len(self.prefix):] for k in self.keys(rel_prefix)]

    def add_node(self, node_id: str | None = None, *, uid: int | None = None, host: str = HOST,
                 netns: str | None = None, extra_args: Iterable[str] = (), **opts) -> Node:
        node_id = node_id or f"n{len(self.nodes) + 1}"
        n = Node(self, node_id, self.workdir, opts, list(extra_args), uid, host, netns)
        self.nodes.append(n)
        return n

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def by_id(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def start(self, timeout: float = READY_TIMEOUT, wait_members: bool = True) -> "Cluster":
        """Start every node not yet running (in parallel), wait for /readyz on each, then wait
        until every running node's nodes/ key is in etcd and, when /api/v1/node lists peers,
        until every node lists every other one."""
        pending = [n for n in self.nodes if not n.alive()]
        for n in pending:
            n.spawn(new_ports=False)
        errors = []
        deadline = time.monotonic() + timeout
        for n in pending:
            try:
                n.wait_ready(max(0.5, deadline - time.monotonic()))
            except HarnessError as e:
                errors.append(str(e))
        if errors:
            raise HarnessError("\n\n".join(errors))
        if wait_members:
            self.wait_members()
        return self

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.alive()]

    def wait_members(self, timeout: float = 10.0) -> None:
        ids = sorted(n.node_id for n in self.running())
        want = sorted(self.key(f"nodes/{i}") for i in ids)
        wait_for(lambda: all(k in self.keys("nodes/") for k in want), timeout, 0.05,
                 f"nodes/ keys {ids} in etcd (have {self.rel_keys('nodes/')})")
        if READINESS == "mqtt":
            return
        for n in self.running():
            info = n.info()
            if isinstance(info.get("peers"), int):
                # only a count: wait (softly -- its meaning is not in the contract) for n-1 peers
                try:
                    wait_for(lambda n=n: n.info()["peers"] >= len(ids) - 1, 5, 0.05,
                             f"{n.node_id} to count {len(ids) - 1} peers")
                except AssertionError as e:
                    print(f"warning: {e} (has {n.info().get('peers')})")
            else:
                wait_for(lambda n=n: set(ids) <= set(peer_ids(n.info()) or ids), timeout, 0.05,
                         f"{n.node_id} to list peers {ids}")

    def kill_all(self) -> None:
        for n in self.nodes:
            n.kill()


def peer_ids(info: dict) -> list[str] | None:
    """Node ids listed by GET /api/v1/node, if the API lists peers (under one of a few plausible
    names); None when it does not."""
    for field in ("peers", "members", "nodes"):
        v = info.get(field)
        if isinstance(v, dict) and isinstance(v.get("nodes") or v.get("members"), list):
            v = v.get("nodes") or v.get("members")
        if isinstance(v, list):
            out = []
            for p in v:
                if isinstance(p, str):
                    out.append(p)
                elif isinstance(p, dict):
                    out.append(str(p.get("node") or p.get("id") or p.get("node_id") or ""))
            ids = [i for i in out if i]
            if info.get("node") and info["node"] not in ids:
                ids.append(info["node"])  # a list of *other* nodes
            return ids
    return None


def unique_cluster_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40]
    return f"{base}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------
# admin / etcd shorthands


def admin_get(node: Node, path: str) -> tuple[int | None, bytes]:
    return node.request("GET", path)


def admin_post(node: Node, path: str, body: bytes = b"") -> tuple[int | None, bytes]:
    return node.request("POST", path, body)


def etcd_keys(etcd: Etcd, prefix: str) -> list[str]:
    return etcd.keys(prefix)


def wait_key(cluster: Cluster, key: str, present: bool = True, timeout: float = TIMEOUT) -> float:
    """Wait until ``key`` (absolute) exists / is gone; returns the seconds it took."""
    t0 = time.monotonic()
    rel = key[len(cluster.prefix):] if key.startswith(cluster.prefix) else key
    parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""

    def check():
        return (key in cluster.etcd.keys(key)) == present

    try:
        wait_for(check, timeout, 0.05, f"key {rel} to {'appear' if present else 'disappear'}")
    except AssertionError as e:
        raise AssertionError(f"{e}; keys under {parent or '/'}: {cluster.rel_keys(parent)}") from None
    return time.monotonic() - t0


def client_owner(via: Node, client_id: str) -> str | None:
    """The node that has ``client_id``'s session, as ``via`` answers GET /api/v1/clients/{id}
    (its own sessions first, then the cluster's client directory). Ask a node other than the
    owner to test the directory. "<unreachable>" while the directory cannot answer (502: the
    client id's home node is down and not yet out of the membership)."""
    st, body = via.request("GET", f"/api/v1/clients/{client_id}")
    if st == 502:
        return "<unreachable>"
    assert st == 200, f"{via.node_id}: GET /api/v1/clients/{client_id} -> {st} {body[:200]!r}"
    return json.loads(body)["node"]


def wait_owner(via: Node, client_id: str, node: str | None, timeout: float = TIMEOUT) -> float:
    """Wait until the client directory (asked through ``via``) names ``node`` (None: no node)
    for ``client_id``; returns the seconds it took."""
    t0 = time.monotonic()
    seen = []

    def check():
        seen.append(client_owner(via, client_id))
        return seen[-1] == node

    wait_for(check, timeout, 0.05, f"{via.node_id} to locate {client_id} on {node} (last: {seen[-1:]})")
    return time.monotonic() - t0


def stays(predicate, duration: float, interval: float = 0.1) -> bool:
    """True if ``predicate()`` holds at every poll for ``duration`` seconds (a bounded check that
    something does NOT change; no sentinel ordering exists between etcd and the brokers)."""
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(interval)


# ---------------------------------------------------------------------------
# protobuf (just enough to read etcd values: NodeRecord, ClientRecord, RetainedRecord)


def pb_fields(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message level: field number -> list of values (varints as int,
    length-delimited as bytes). Raises ValueError if ``buf`` is not a protobuf message."""
    out: dict[int, list] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= len(buf) or shift > 63:
                raise ValueError("bad varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while pos < len(buf):
        tag = varint()
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field 0")
        if wt == 0:
            val: Any = varint()
        elif wt == 2:
            n = varint()
            if pos + n > len(buf):
                raise ValueError("truncated")
            val = buf[pos:pos + n]
            pos += n
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(field, []).append(val)
    return out


def decode_record(value: bytes, names: dict[int, str]) -> dict | None:
    """A NodeRecord/ClientRecord-like value as a dict of its string/int fields, from JSON or
    protobuf (the tests do not assume which); None if it is neither."""
    try:
        v = json.loads(value)
        if isinstance(v, dict):
            return v
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        f = pb_fields(value)
    except ValueError:
        return None
    out: dict[str, Any] = {}
    for num, name in names.items():
        if num in f:
            x = f[num][0]
            out[name] = x.decode(errors="replace") if isinstance(x, bytes) else x
    return out


NODE_RECORD = {1: "node", 2: "mqtt_endpoint", 3: "peer_endpoint", 4: "version", 5: "state"}
CLIENT_RECORD = {1: "node", 2: "epoch"}


# ---------------------------------------------------------------------------
# MQTT clients


class ClusterClient(PahoClient):
    """PahoClient whose probe messages (payload starting with PROBE) go to ``probes`` instead of
    ``messages``, so that route-readiness probing never disturbs what a test counts."""

    def __init__(self, *a, **kw):
        self.probes: queue.Queue = queue.Queue()
        super().__init__(*a, **kw)

    def _on_message(self, client, userdata, msg):
        if msg.payload.startswith(PROBE):
            self.probes.put((time.monotonic(), msg))
        else:
            self.messages.put(msg)

    def move_to(self, node: Node, clean: bool = False, expect_success: bool = True):
        """Reconnect this same paho client (keeping its in-flight QoS 2 receive state) to
        ``node``; returns the CONNACK tuple."""
        self.stop()  # the network thread of the old connection (ended or not)
        self.broker = node
        return self.connect(expect_success=expect_success, clean=clean)

    def collect(self, n: int, timeout: float = TIMEOUT) -> list:
        return self.get_n(n, timeout)

    def collect_quiet(self, quiet: float = QUIET) -> list:
        """Everything that arrives until nothing has arrived for ``quiet`` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out


def await_delivery(pub: PahoClient, subs: ClusterClient | list[ClusterClient], topic: str,
                   timeout: float = TIMEOUT, interval: float = 0.01, since: float | None = None) -> float:
    """Publish QoS 0 probes on ``topic`` from ``pub`` every ``interval`` until every client in
    ``subs`` has received one (route propagated end to end). Returns the seconds from ``since``
    (default: the call) to the moment the last of them received its first probe."""
    if isinstance(subs, ClusterClient):
        subs = [subs]
    t0 = time.monotonic() if since is None else since
    got: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    seq = 0
    while len(got) < len(subs):
        if time.monotonic() > deadline:
            missing = [s.client_id for i, s in enumerate(subs) if i not in got]
            raise AssertionError(f"probes published on {pub.broker.node_id if hasattr(pub.broker, 'node_id') else pub.broker}"
                                 f" to {topic!r} did not reach {missing} within {timeout}s")
        seq += 1
        pub.publish(topic, PROBE + str(seq).encode(), qos=0)
        end = time.monotonic() + interval
        for i, s in enumerate(subs):
            if i in got:
                continue
            try:
                at, _m = s.probes.get(timeout=max(0.0, end - time.monotonic()))
                got[i] = at
            except queue.Empty:
                pass
    return max(got.values()) - t0


def iptables_available() -> str | None:
    """Path of a working iptables, or None."""
    path = shutil.which("iptables")
    if not path:
        return None
    r = subprocess.run([path, "-S", "OUTPUT"], capture_output=True, timeout=10)
    return path if r.returncode == 0 else None


class Firewall:
    """iptables OUTPUT rules tagged with a comment unique to this test run, removed at
    teardown (also sweeping any rule carrying the tag)."""

    def __init__(self, path: str):
        self.path = path
        self.tag = f"starling-e2e-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.rules: list[list[str]] = []

    def _add(self, match: list[str], target: list[str]) -> None:
        rule = match + ["-m", "comment", "--comment", self.tag] + target
        r = subprocess.run([self.path, "-A", "OUTPUT", *rule], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise HarnessError(f"iptables -A OUTPUT {' '.join(rule)}: {r.stderr.strip()}")
        self.rules.append(rule)

    def drop(self, *, dport: int, uid: int | None = None, dst: str = HOST) -> None:
        """Drop TCP to dst:dport (from sockets of ``uid`` only, if given). With a uid, the
        connection is also marked (conntrack) and dropped by its mark, because once a process
        closes a socket the kernel keeps flushing it as an orphan that the owner match no longer
        sees."""
        base = ["-p", "tcp", "-d", dst, "--dport", str(dport)]
        if uid is None:
            self._add(base, ["-j", "DROP"])
            return
        mark = hex(0x5E2E0000 + (dport & 0xFFFF))
        self._add(base + ["-m", "owner", "--uid-owner", str(uid)], ["-j", "CONNMARK", "--set-mark", mark])
        self._add(["-m", "connmark", "--mark", mark], ["-j", "DROP"])

    def clear(self) -> None:
        for rule in reversed(self.rules):
            subprocess.run([self.path, "-D", "OUTPUT", *rule], capture_output=True, timeout=10)
        self.rules = []
        # sweep anything left with our tag
        r = subprocess.run([self.path, "-S", "OUTPUT"], capture_output=True, text=True, timeout=10)
        for line in r.stdout.splitlines():
            if self.tag in line and line.startswith("-A "):
                subprocess.run([self.path, "-D", *line.split()[1:]], capture_output=True, timeout=10)


def background(fn, *args, **kw) -> threading.Thread:
    """Run fn in a daemon thread; its exception (if any) is kept in ``thread.error``."""
    def run():
        try:
            fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            t.error = e
    t = threading.Thread(target=run, daemon=True)
    t.error = None
    t.start()
    return t


# ---------------------------------------------------------------------------
# partitions of the peer link between two nodes


class IptablesPartition:
    """n1 and n2 run under uids of their own; the cut is an iptables DROP of n1's packets to
    n2's peer port and of n2's packets to n1's peer port (owner match), so n3 is untouched."""

    kind = "iptables"
    UIDS = (64001, 64002)

    def __init__(self, path: str, etcd: Etcd):
        self.fw = Firewall(path)
        self.etcd = etcd
        # A rule that needs conntrack, added before any node starts: iptables-nft enables
        # connection tracking only once a rule needs it, and a connection first seen by
        # conntrack at the cut gets an entry that dies unconfirmed with the dropped packet (and
        # its mark with it), so later packets of the closed socket would pass. This rule never
        # matches; it only keeps every peer connection tracked from its first packet.
        self.tracker = Firewall(path)
        self.tracker._add(["-m", "connmark", "--mark", "0x5e2effff"], ["-j", "DROP"])

    def node_options(self) -> dict:
        return {"uids": {0: self.UIDS[0], 1: self.UIDS[1]}}

    def cut(self, a: Node, b: Node) -> None:
        self.fw.drop(dport=b.peer_port, uid=self.UIDS[0])
        self.fw.drop(dport=a.peer_port, uid=self.UIDS[1])

    def cut_etcd(self, a: Node) -> None:
        """Cut n1 (the first node) from etcd only."""
        assert a.uid == self.UIDS[0], "only n1 can be cut from etcd"
        self.fw.drop(dport=self.etcd.client_port, uid=self.UIDS[0])

    def restore(self) -> None:
        self.fw.clear()

    def close(self) -> None:
        self.fw.clear()
        self.tracker.clear()


class NetnsPartition:
    """n1 runs in a network namespace of its own, linked to the host by a veth pair
    (10.203.S.2 inside, 10.203.S.1 outside); n2 and n3 bind 10.203.S.12 and 10.203.S.13 on the
    host side and etcd also listens on 10.203.S.11. The cut is a blackhole route to n2's address
    inside n1's namespace: nothing goes from n1 to n2 (neither requests nor replies), n3 is
    untouched. Needs root and iproute2 only."""

    kind = "netns"

    def __init__(self, etcd: Etcd):
        tag = uuid.uuid4().hex[:6]
        self.ns = f"se2e-{tag}"
        self.veth_host, self.veth_ns = f"se2e{tag}h", f"se2e{tag}n"
        self.subnet = 10 + int(tag[:2], 16) % 200
        self.gw = f"10.203.{self.subnet}.1"
        self.etcd_host = f"10.203.{self.subnet}.11"
        self.addr = {0: f"10.203.{self.subnet}.2", 1: f"10.203.{self.subnet}.12",
                     2: f"10.203.{self.subnet}.13"}
        self.etcd = etcd
        self.blackholed: list[str] = []
        self.created = False

    @staticmethod
    def _ip(*args: str, ns: str | None = None) -> None:
        cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")

    def setup(self) -> "NetnsPartition":
        self._ip("netns", "add", self.ns)
        self.created = True
        self._ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        self._ip("link", "set", self.veth_ns, "netns", self.ns)
        self._ip("addr", "add", f"{self.gw}/24", "dev", self.veth_host)
        for a in (self.addr[1], self.addr[2], self.etcd_host):
            self._ip("addr", "add", f"{a}/32", "dev", self.veth_host)
        self._ip("link", "set", self.veth_host, "up")
        self._ip("addr", "add", f"{self.addr[0]}/24", "dev", self.veth_ns, ns=self.ns)
        self._ip("link", "set", self.veth_ns, "up", ns=self.ns)
        self._ip("link", "set", "lo", "up", ns=self.ns)
        self.etcd.extra_host = self.etcd_host
        self.etcd.restart()  # now also listening where n1 can reach it
        return self

    def node_options(self) -> dict:
        return {"hosts": dict(self.addr), "netns": {0: self.ns}}

    def cut(self, a: Node, b: Node) -> None:
        self._ip("route", "add", "blackhole", f"{b.host}/32", ns=self.ns)
        self.blackholed.append(b.host)

    def cut_etcd(self, a: Node) -> None:
        """Cut n1 (the node in the namespace) from etcd only (etcd has an address of its own;
        host clients reach n1 from the veth's primary address, which stays routable)."""
        assert a.netns == self.ns, "only n1 can be cut from etcd"
        self._ip("route", "add", "blackhole", f"{self.etcd_host}/32", ns=self.ns)
        self.blackholed.append(self.etcd_host)

    def restore(self) -> None:
        for h in self.blackholed:
            self._ip("route", "del", "blackhole", f"{h}/32", ns=self.ns)
        self.blackholed = []

    def close(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)
            subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, timeout=10)
            self.created = False


def netns_available() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if not shutil.which("ip"):
        return "no `ip` (apt-get install iproute2)"
    name = f"se2e-probe-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None
