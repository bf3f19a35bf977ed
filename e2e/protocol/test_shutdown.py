"""Graceful shutdown on SIGTERM / SIGINT (MQTT 5.0 §3.14.2.1 reason 0x8B Server shutting down,
§4.13; the broker's process contract: exit code 0 within 10 s)."""

from __future__ import annotations

import signal

import pytest

import rawmqtt as r
from helpers import TIMEOUT

V311, V5 = 4, 5
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])


@SIGNALS
def test_signal_exits_zero_and_closes_connections(broker, raw, paho, sig):
    """Graceful shutdown: on SIGTERM/SIGINT the broker closes every client connection (a 3.1.1
    connection without a DISCONNECT packet, MQTT 3.1.1 §3.14) and exits with code 0 within 10 s."""
    c5 = raw(broker, V5)
    c5.connect("sd5")
    c3 = raw(broker, V311)
    c3.connect("sd311")
    p = paho(broker, "sd-paho", version=V5)
    p.subscribe("sd/t", 1)
    broker.send_signal(sig)
    code = broker.wait_exit(10)
    assert code == 0, f"broker exit code {code!r} (None: still running after 10 s)"
    pkts5 = c5.recv_until_closed(TIMEOUT)
    assert all(x.ptype == r.DISCONNECT for x in pkts5), pkts5
    assert r.disconnect_reason(pkts5) in (None, r.RC_SERVER_SHUTTING_DOWN), pkts5
    assert c3.recv_until_closed(TIMEOUT) == []
    p.wait_disconnect()


@pytest.mark.starling_only(reason="Mosquitto 2.0.11 closes connections on shutdown without DISCONNECT 0x8B")
@SIGNALS
def test_signal_v5_clients_receive_server_shutting_down(broker, raw, paho, sig):
    """MQTT 5.0 §3.14.2.1 / §4.13: a shutting-down server sends DISCONNECT 0x8B Server shutting
    down to MQTT 5.0 clients (raw socket and paho on_disconnect), then exits with code 0."""
    c5 = raw(broker, V5)
    c5.connect("sd5")
    c5b = raw(broker, V5)
    c5b.connect("sd5b", will_topic="sd/will", will_payload=b"w")
    p = paho(broker, "sd-paho", version=V5)
    broker.send_signal(sig)
    for c in (c5, c5b):
        pkts = c.recv_until_closed(10)
        assert r.disconnect_reason(pkts) == r.RC_SERVER_SHUTTING_DOWN, pkts
    from_server, reason, _props = p.wait_disconnect(10)
    assert from_server and reason == r.RC_SERVER_SHUTTING_DOWN
    assert broker.wait_exit(10) == 0


def test_shutdown_with_inflight_and_persistent_sessions(broker, raw, paho):
    """Graceful shutdown with work in progress (unacknowledged QoS 1/2 messages, an offline
    persistent session with queued messages) still exits with code 0 within 10 s."""
    c = raw(broker, V5)
    c.connect("busy", props={"ReceiveMaximum": 1, "SessionExpiryInterval": 60})
    c.subscribe(1, [("busy/t", 2)])
    off = raw(broker, V5)
    off.connect("offline", props={"SessionExpiryInterval": 60})
    off.subscribe(1, [("busy/t", 1)])
    off.disconnect()
    pub = paho(broker, "pub", version=V5)
    for i in range(5):
        pub.publish("busy/t", f"m{i}".encode(), qos=2)
    c.expect(r.PUBLISH)  # one in flight, never acknowledged
    broker.send_signal(signal.SIGTERM)
    assert broker.wait_exit(10) == 0
