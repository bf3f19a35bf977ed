"""Broker process management and a paho-mqtt wrapper for the conformance tests.

The broker under test is chosen with STARLING_TEST_BROKER=starling|mosquitto
(default starling). See README.md.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
BROKER_KIND = os.environ.get("STARLING_TEST_BROKER", "starling").strip().lower()
IS_STARLING = BROKER_KIND == "starling"
IS_MOSQUITTO = BROKER_KIND == "mosquitto"
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")

# Default timeout for anything that is expected to happen "promptly".
TIMEOUT = 5.0
# Bounded wait used when asserting that something does NOT happen and no
# sentinel ordering is available.
QUIET = 0.5


def starling_bin() -> Path:
    return Path(os.environ.get("STARLING_BIN", REPO / "target" / "debug" / "starling"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def elapse(seconds: float) -> None:
    """Let wall-clock time pass for a *time-based* protocol feature under test
    (session expiry, message expiry, will delay). Never used to synchronise
    with the broker or with clients."""
    time.sleep(seconds)


# ---------------------------------------------------------------------------
# Broker processes

# option name -> Starling CLI flag
STARLING_FLAGS = {
    "park_idle_after_ms": "--park-idle-after-ms",
    "max_connections": "--max-connections",
    "max_packet_size": "--max-packet-size",
    "max_inflight": "--max-inflight",
    "max_queued_messages": "--max-queued-messages",
    "queue_qos0": "--queue-qos0",
    "max_keep_alive": "--max-keep-alive",
    "max_session_expiry": "--max-session-expiry",
    "max_topic_length": "--max-topic-length",
    "max_topic_levels": "--max-topic-levels",
    "max_subscriptions_per_client": "--max-subscriptions-per-client",
    "topic_alias_maximum": "--topic-alias-maximum",
    "max_awaiting_rel": "--max-awaiting-rel",
    "log_level": "--log-level",
    "client_dollar_topics": "--client-dollar-topics",
    "admin_token": "--admin-token",
    "admin_token_file": "--admin-token-file",
    "max_pending_connects": "--max-pending-connects",
    "incomplete_packet_timeout_secs": "--incomplete-packet-timeout-secs",
    "max_read_buffer_bytes": "--max-read-buffer-bytes",
    "max_queued_bytes": "--max-queued-bytes",
    "max_retained_messages": "--max-retained-messages",
    "max_retained_bytes": "--max-retained-bytes",
    "max_sessions": "--max-sessions",
    "memory_high_watermark_bytes": "--memory-high-watermark-bytes",
    "password_file": "--password-file",
    "allow_anonymous": "--allow-anonymous",
}

# Mosquitto equivalents. Defaults mirror Starling's defaults so that tests see
# the same limits on both brokers (mosquitto's own defaults differ: inflight
# 20, unlimited packet size, 10 topic aliases, qos0 not queued).
MOSQUITTO_DEFAULTS = {
    "max_packet_size": 1024 * 1024,
    "max_inflight": 32,
    "max_queued_messages": 1000,
    "queue_qos0": True,
    "topic_alias_maximum": 65535,
}
MOSQUITTO_GLOBAL = {
    "max_packet_size": "max_packet_size",
    "max_inflight": "max_inflight_messages",
    "max_queued_messages": "max_queued_messages",
    "queue_qos0": "queue_qos0_messages",
    "max_keep_alive": "max_keepalive",
    "password_file": "password_file",
    "allow_anonymous": "allow_anonymous",
}
MOSQUITTO_LISTENER = {
    "max_connections": "max_connections",
    "topic_alias_maximum": "max_topic_alias",
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Broker:
    """One broker process listening on 127.0.0.1:port."""

    def __init__(self, opts: dict[str, Any], workdir: Path):
        self.host = HOST
        self.opts = dict(opts)
        # kind="mosquitto" (or "starling"): this broker, whatever the suite runs against.
        self.kind = self.opts.pop("kind", BROKER_KIND)
        self.workdir = workdir
        self.port = 0
        # admin=True (Starling only): an admin HTTP listener, for counters
        self.admin = bool(self.opts.pop("admin", False))
        self.admin_port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "broker.log"
        self._log_file = None

    # -- command lines --------------------------------------------------------
    def _starling_cmd(self) -> list[str]:
        binary = starling_bin()
        if not binary.exists():
            raise RuntimeError(
                f"Starling binary not found at {binary}: run `cargo build --bin starling` "
                "(or set STARLING_BIN, or STARLING_TEST_BROKER=mosquitto to validate the suite)")
        cmd = [str(binary), "--listen", f"{HOST}:{self.port}"]
        if self.admin:
            cmd += ["--admin-listen", f"{HOST}:{self.admin_port}"]
        opts = dict(self.opts)
        if "log_level" not in opts and os.environ.get("STARLING_TEST_LOG_LEVEL"):
            opts["log_level"] = os.environ["STARLING_TEST_LOG_LEVEL"]
        # STARLING_TEST_PARK_IDLE_AFTER_MS=1 runs the suite with every idle
        # connection parked at once (see test_parking.py).
        if "park_idle_after_ms" not in opts and os.environ.get("STARLING_TEST_PARK_IDLE_AFTER_MS"):
            opts["park_idle_after_ms"] = int(os.environ["STARLING_TEST_PARK_IDLE_AFTER_MS"])
        for name, value in opts.items():
            if name not in STARLING_FLAGS:
                raise ValueError(f"unknown broker option {name!r}")
            cmd += [STARLING_FLAGS[name], _fmt(value)]
        return cmd

    def _mosquitto_cmd(self) -> list[str]:
        opts = {**MOSQUITTO_DEFAULTS, **self.opts}
        opts.pop("log_level", None)
        lines = [
            "per_listener_settings false",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "user root",
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
        ]
        for name, value in opts.items():
            if name == "max_connections" and value > 0:
                # Mosquitto 2.0.11 admits max_connections + 1 clients (its check is
                # "count > max"), so configure one less to get the same limit as Starling.
                value -= 1
            if name in MOSQUITTO_LISTENER:
                lines.append(f"{MOSQUITTO_LISTENER[name]} {_fmt(value)}")
            elif name in MOSQUITTO_GLOBAL:
                lines.append(f"{MOSQUITTO_GLOBAL[name]} {_fmt(value)}")
            elif name in STARLING_FLAGS:
                raise ValueError(
                    f"broker option {name!r} has no Mosquitto equivalent: mark the test "
                    "@pytest.mark.starling_only")
            else:
                raise ValueError(f"unknown broker option {name!r}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [MOSQUITTO_BIN, "-c", str(conf)]

    # -- lifecycle ------------------------------------------------------------
    def start(self, ready_timeout: float = 10.0) -> "Broker":
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            self.admin_port = free_port() if self.admin else 0
            cmd = self._starling_cmd() if self.kind == "starling" else self._mosquitto_cmd()
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"$ {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir)
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"broker exited with {self.proc.returncode} during startup"
                    break
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.02)
            else:
                self.kill()
                raise RuntimeError(f"broker not accepting connections on port {self.port} "
                                   f"after {ready_timeout}s\n{self.log_tail()}")
            # exited during startup: maybe the port was taken in the meantime; retry
        hint = (" (is the binary current? run `cargo build --bin starling`)"
                if self.kind == "starling" else "")
        raise RuntimeError(f"{last_error}{hint}\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_bytes(self) -> bytes:
        """Everything the broker logged so far."""
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def log_tail(self, n: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def counters(self) -> dict[str, int]:
        """The broker's counters (GET /api/v1/node; needs admin=True)."""
        assert self.admin, "start the broker with admin=True"
        with urllib.request.urlopen(f"http://{HOST}:{self.admin_port}/api/v1/node", timeout=5) as r:
            node = json.load(r)
        return {**node["counters"], "connections": node["connections"]}


# ---------------------------------------------------------------------------
# paho-mqtt wrapper


def pprops(packet_type: str, **values: Any) -> Properties:
    """paho Properties for ``packet_type`` ('CONNECT', 'PUBLISH', 'SUBSCRIBE', ...)."""
    p = Properties(getattr(PacketTypes, packet_type))
    for k, v in values.items():
        setattr(p, k, v)
    return p


def prop(msg_or_props: Any, name: str, default: Any = None) -> Any:
    props = getattr(msg_or_props, "properties", msg_or_props)
    if props is None:
        return default
    return getattr(props, name, default)


class PahoClient:
    """A paho-mqtt client with queues filled from its callbacks.

    version: 3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5 (MQTT 5.0).
    """

    def __init__(self, broker: Broker, client_id: str = "", version: int = 5, *, clean: bool = True,
                 keepalive: int = 30, props: Properties | None = None, will: dict | None = None,
                 connect: bool = True, expect_success: bool = True,
                 username: str | None = None, password: str | None = None):
        self.broker = broker
        self.version = version
        self.client_id = client_id
        self.clean = clean
        if version == 5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        else:
            # version 4 is MQTT 3.1.1; version 3 is MQTT 3.1 ("MQIsdp").
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=clean,
                                      protocol=mqtt.MQTTv311 if version == 4 else mqtt.MQTTv31,
                                      reconnect_on_failure=False)
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._acks: dict[int, tuple[list[int], Any]] = {}
        self._published: dict[int, tuple[int, Any]] = {}
        self._ack_cv = threading.Condition(self._lock)
        self.keepalive = keepalive
        self.connect_props = props
        self.connected = False
        self._looping = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_disconnect = self._on_disconnect
        if username is not None:
            c.username_pw_set(username, password)
        if will:
            c.will_set(will["topic"], will.get("payload", b""), will.get("qos", 0), will.get("retain", False),
                       properties=will.get("props"))
        if connect:
            self.connect(expect_success=expect_success)

    # -- callbacks --------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connected = reason_code == 0
        self.connacks.put((bool(flags.session_present), int(reason_code.value), properties))

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._ack_cv:
            self._published[mid] = (int(reason_code.value), properties)
            self._ack_cv.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._ack_cv:
            self._acks[mid] = ([int(rc.value) for rc in reason_codes], properties)
            self._ack_cv.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._ack_cv:
            codes = [int(rc.value) for rc in reason_codes] if isinstance(reason_codes, list) else [
                int(reason_codes.value)]
            self._acks[mid] = (codes, properties)
            self._ack_cv.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        self.disconnects.put((bool(flags.is_disconnect_packet_from_server), int(reason_code.value), properties))

    # -- operations ---------------------------------------------------------------
    def connect(self, expect_success: bool = True, clean: bool | None = None, timeout: float = TIMEOUT):
        """(Re)connect; returns (session_present, reason_code, properties) from CONNACK."""
        if clean is None:
            clean = self.clean
        kwargs: dict[str, Any] = {}
        if self.version == 5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = self.connect_props
        self.client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive, **kwargs)
        # paho leaves Nagle on: a packet written while an earlier small one
        # is unacknowledged (a PUBACK) would wait up to 40 ms for the peer's
        # delayed ACK, which timing assertions would blame on the broker.
        sock = self.client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._looping:
            self.client.loop_start()
            self._looping = True
        try:
            ack = self.connacks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no CONNACK for client {self.client_id!r} within {timeout}s") from None
        if expect_success:
            assert ack[1] == 0, f"CONNACK refused with {ack[1]:#x}"
        self.connack = ack
        return ack

    @property
    def session_present(self) -> bool:
        return self.connack[0]

    def _wait_ack(self, table: dict, mid: int, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        with self._ack_cv:
            while mid not in table:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {what} for mid {mid} within {timeout}s")
                self._ack_cv.wait(remaining)
            return table.pop(mid)

    def subscribe(self, topic: str, qos: int = 0, *, no_local: bool = False, rap: bool = False, rh: int = 0,
                  props: Properties | None = None, timeout: float = TIMEOUT) -> list[int]:
        """Subscribe and wait for SUBACK; returns the reason codes / granted QoS values."""
        if self.version == 5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)
            rc, mid = self.client.subscribe(topic, options=opts, properties=props)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        codes, _props = self._wait_ack(self._acks, mid, "SUBACK", timeout)
        self.last_suback_props = _props
        return codes

    def unsubscribe(self, topic: str, timeout: float = TIMEOUT) -> list[int]:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        codes, _props = self._wait_ack(self._acks, mid, "UNSUBACK", timeout)
        return codes

    def publish(self, topic: str, payload: Any = b"", qos: int = 0, retain: bool = False,
                props: Properties | None = None, wait: bool = True, timeout: float = TIMEOUT):
        """Publish; with wait=True blocks until on_publish fired (PUBACK / PUBCOMP received for
        QoS 1/2, written to the socket for QoS 0) and returns its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if not wait:
            return info
        code, _props = self._wait_ack(self._published, info.mid, "publish completion", timeout)
        return code

    def wait_published(self, info, timeout: float = TIMEOUT) -> int:
        code, _props = self._wait_ack(self._published, info.mid, "publish completion", timeout)
        return code

    def get(self, timeout: float = TIMEOUT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.client_id!r}: no message within {timeout}s") from None

    def get_n(self, n: int, timeout: float = TIMEOUT) -> list:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(0.0, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"client {self.client_id!r}: got {len(out)} of {n} messages within {timeout}s: "
                    f"{[m.payload for m in out][:20]}") from None
        return out

    def until(self, payload: bytes, timeout: float = TIMEOUT) -> list:
        """Messages received before the sentinel ``payload`` (which is consumed)."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                m = self.messages.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"sentinel {payload!r} not received within {timeout}s; "
                                     f"got {[x.payload for x in before]}") from None
            if m.payload == payload:
                return before
            before.append(m)

    def assert_no_message(self, timeout: float = QUIET) -> None:
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {m.topic!r}: {m.payload!r}")

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def wait_disconnect(self, timeout: float = TIMEOUT):
        """(from_server_packet, reason_code, properties) of the next disconnect."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.client_id!r} not disconnected within {timeout}s") from None

    def disconnect(self, reason: int | None = None, props: Properties | None = None, timeout: float = TIMEOUT):
        if reason is not None:
            from paho.mqtt.reasoncodes import ReasonCode
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
            self.client.disconnect(reasoncode=rc, properties=props)
        else:
            self.client.disconnect(properties=props)
        self.wait_disconnect(timeout)
        self.stop()

    def stop(self) -> None:
        """Stop the network loop (without sending DISCONNECT if still connected)."""
        if self._looping:
            self.client.loop_stop()
            self._looping = False

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT (an ungraceful close)."""
        sock = self.client.socket()
        self.stop()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        try:
            if self.connected:
                self.client.disconnect()
        except Exception:
            pass
        self.stop()
        try:
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass


def exchange(a: PahoClient, b: PahoClient, topic: str = "good/ping", payload: bytes | None = None,
             timeout: float = TIMEOUT) -> None:
    """a publishes QoS1 on ``topic``; b (subscribed to it) must receive it."""
    payload = payload or f"ping-{time.monotonic_ns()}".encode()
    a.publish(topic, payload, qos=1)
    b.until(payload, timeout)  # anything received before it (earlier pings) is fine


# ---------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub


class SubProc:
    """mosquitto_sub running in the background with -d (debug output), line-buffered through
    stdbuf, so that a test can wait for its SUBACK before publishing."""

    def __init__(self, broker: "Broker", args: list[str]):
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", broker.host, "-p", str(broker.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.lines: queue.Queue = queue.Queue()
        self.all_lines: list[str] = []
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    def _reader(self):
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.all_lines.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pred: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: expected line not seen; output so far: {self.all_lines}") from None
            if line is None:
                raise AssertionError(f"mosquitto_sub exited; output: {self.all_lines}")
            if pred(line):
                return line

    def wait_subscribed(self, timeout: float = TIMEOUT) -> None:
        self.wait_line(lambda l: l.startswith("Client ") and "received SUBACK" in l, timeout)

    def finish(self, timeout: float = 10.0) -> tuple[int, list[str]]:
        """Wait for exit; returns (exit code, output lines without the -d debug lines)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mosquitto_sub did not exit; output: {self.all_lines}") from None
        self._t.join(5)
        return rc, [l for l in self.all_lines if not _is_debug_line(l)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _is_debug_line(line: str) -> bool:
    """Lines printed by mosquitto_sub -d (not message output)."""
    return line.startswith("Client ") or line.startswith("Subscribed (mid:")


def mosquitto_pub(broker: Broker, args: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *args],
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
