"""Interoperability with the Mosquitto command-line clients (mosquitto_pub / mosquitto_sub 2.0.11).

The same broker features as the other modules, exercised through independent client code:
QoS 0/1/2, retained messages, wildcards, MQTT 3.1.1 and 5.0 (-V), v5 properties (-D), wills
(--will-topic) and persistent sessions (-c).
"""

from __future__ import annotations

import shutil
import signal

import pytest

from helpers import mosquitto_pub



@pytest.fixture(autouse=True)
def _require_mosquitto_clients():
    """These tests never skip: a machine without the tools fails them with the fix."""
    missing = [tool for tool in ("mosquitto_pub", "mosquitto_sub", "stdbuf") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/install-test-deps.sh "
                    "(or apt-get install mosquitto-clients coreutils)")

VERSIONS = pytest.mark.parametrize("cli_version", ["311", "5"], ids=["v311", "v5"])


def pub_ok(broker, args: list[str]) -> None:
    res = mosquitto_pub(broker, args)
    assert res.returncode == 0, (res.stdout, res.stderr)


@VERSIONS
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_qos(broker, sub_proc, cli_version, qos):
    """MQTT 3.1.1 / 5.0 §4.3 (QoS 0/1/2 flows) and §3.8.4 (delivered at min(publish, granted) QoS):
    mosquitto_sub -C 3 -W 10 -q 2 receives three messages published by mosquitto_pub -q N."""
    sub = sub_proc(broker, ["-V", cli_version, "-q", "2", "-t", "cli/#", "-C", "3", "-W", "10",
                            "-F", "%t|%p|%q|%r"])
    sub.wait_subscribed()
    for i in range(3):
        pub_ok(broker, ["-V", cli_version, "-q", str(qos), "-t", f"cli/{i}", "-m", f"msg{i}"])
    rc, lines = sub.finish()
    assert rc == 0, lines
    assert lines == [f"cli/{i}|msg{i}|{qos}|0" for i in range(3)]


def test_sub_times_out_without_messages(broker, sub_proc):
    """MQTT 3.1.1 §3.8 / 5.0 §3.8: a subscription to a topic nobody publishes to delivers
    nothing: mosquitto_sub -W 1 exits on its timeout with no output."""
    sub = sub_proc(broker, ["-t", "silent/t", "-C", "1", "-W", "1"])
    sub.wait_subscribed()
    rc, lines = sub.finish()
    assert rc != 0
    assert [l for l in lines if l != "Timed out"] == []


@VERSIONS
def test_retained_set_and_cleared(broker, sub_proc, cli_version):
    """MQTT 3.1.1 §3.3.1.3 MQTT-3.3.1-6, MQTT-3.3.1-10 / MQTT 5.0 MQTT-3.3.1-6, MQTT-3.3.1-9:
    mosquitto_pub -r stores a retained message (delivered with the retain flag to a later
    subscriber); -r -n (zero-length payload) clears it."""
    pub_ok(broker, ["-V", cli_version, "-q", "1", "-r", "-t", "cli/ret", "-m", "stored"])
    sub = sub_proc(broker, ["-V", cli_version, "-t", "cli/ret", "-C", "1", "-W", "5", "-F", "%r|%p"])
    rc, lines = sub.finish()
    assert rc == 0 and lines == ["1|stored"], lines
    pub_ok(broker, ["-V", cli_version, "-q", "1", "-r", "-t", "cli/ret", "-n"])
    sub = sub_proc(broker, ["-V", cli_version, "-t", "cli/ret", "-C", "1", "-W", "5", "-F", "%r|%p"])
    sub.wait_subscribed()
    pub_ok(broker, ["-V", cli_version, "-t", "cli/ret", "-m", "live-sentinel"])
    rc, lines = sub.finish()
    assert rc == 0 and lines == ["0|live-sentinel"], lines


@VERSIONS
def test_wildcard_subscriptions(broker, sub_proc, cli_version):
    """MQTT 3.1.1 / 5.0 §4.7.1: '+' and '#' filters given to mosquitto_sub (-t repeated)."""
    sub = sub_proc(broker, ["-V", cli_version, "-t", "wc/+/x", "-t", "other/#", "-C", "3", "-W", "10",
                            "-F", "%t"])
    sub.wait_subscribed()
    for t in ("wc/a/x", "wc/b/y", "wc/a/x/z", "other", "wc/c/x"):
        pub_ok(broker, ["-V", cli_version, "-q", "1", "-t", t, "-m", t])
    rc, lines = sub.finish()
    assert rc == 0
    assert lines == ["wc/a/x", "other", "wc/c/x"]


def test_cross_version_delivery(broker, sub_proc):
    """MQTT 3.1.1 and 5.0 clients on one broker: a 5.0 publication with properties reaches a 3.1.1
    subscriber (payload only), and a 3.1.1 publication reaches a 5.0 subscriber."""
    s311 = sub_proc(broker, ["-V", "311", "-t", "x/v5", "-C", "1", "-W", "10", "-F", "%t|%p"])
    s5 = sub_proc(broker, ["-V", "5", "-t", "x/v311", "-C", "1", "-W", "10", "-F", "%t|%p"])
    s311.wait_subscribed()
    s5.wait_subscribed()
    pub_ok(broker, ["-V", "5", "-q", "1", "-t", "x/v5", "-m", "from5", "-D", "publish", "user-property", "a", "b"])
    pub_ok(broker, ["-V", "311", "-q", "1", "-t", "x/v311", "-m", "from311"])
    assert s311.finish() == (0, ["x/v5|from5"])
    assert s5.finish() == (0, ["x/v311|from311"])


def test_v5_properties_via_D(broker, sub_proc):
    """MQTT 5.0 §3.3.2.3: properties set with mosquitto_pub -D (user-property, content-type,
    response-topic, correlation-data, payload-format-indicator, message-expiry-interval) are
    forwarded to a mosquitto_sub -V 5 subscriber."""
    sub = sub_proc(broker, ["-V", "5", "-t", "props/t", "-C", "1", "-W", "10",
                            "-F", "%P|%C|%R|%D|%F|%E"])
    sub.wait_subscribed()
    pub_ok(broker, ["-V", "5", "-q", "1", "-t", "props/t", "-m", "hello",
                    "-D", "publish", "user-property", "key", "value",
                    "-D", "publish", "content-type", "text/plain",
                    "-D", "publish", "response-topic", "props/reply",
                    "-D", "publish", "correlation-data", "corr-1",
                    "-D", "publish", "payload-format-indicator", "1",
                    "-D", "publish", "message-expiry-interval", "60"])
    rc, lines = sub.finish()
    assert rc == 0, lines
    assert len(lines) == 1
    user, ctype, rtopic, corr, pfi, expiry = lines[0].split("|")
    assert (user, ctype, rtopic, corr, pfi) == ("key:value", "text/plain", "props/reply", "corr-1", "1")
    assert 0 < int(expiry) <= 60


def test_v5_subscription_identifier_via_D(broker, sub_proc):
    """MQTT 5.0 §3.8.2.1.2 / §3.3.4 MQTT-3.3.4-3: mosquitto_sub -D subscribe
    subscription-identifier 42 sees the identifier on delivered messages."""
    sub = sub_proc(broker, ["-V", "5", "-t", "sid/t", "-C", "1", "-W", "10", "-F", "%S|%p",
                            "-D", "subscribe", "subscription-identifier", "42"])
    sub.wait_subscribed()
    pub_ok(broker, ["-V", "5", "-t", "sid/t", "-m", "x"])
    assert sub.finish() == (0, ["42|x"])


@VERSIONS
def test_will_via_will_topic(broker, sub_proc, paho, cli_version):
    """MQTT 3.1.1 MQTT-3.1.2-8 / MQTT 5.0 §3.1.2.5: a mosquitto_sub started with --will-topic that
    is killed (no DISCONNECT) has its Will published."""
    watcher = paho(broker, "watcher", version=5)
    watcher.subscribe("cliwill/#", 1)
    victim = sub_proc(broker, ["-V", cli_version, "-t", "unused/t", "--will-topic", "cliwill/t",
                               "--will-payload", "cli-gone", "--will-qos", "1"])
    victim.wait_subscribed()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(5)
    m = watcher.get()
    assert (m.topic, m.payload, m.qos) == ("cliwill/t", b"cli-gone", 1)


@VERSIONS
def test_persistent_session_via_c(broker, sub_proc, cli_version):
    """MQTT 3.1.1 §3.1.2.4 / MQTT 5.0 §3.1.2.4, §3.1.2.11.2: mosquitto_sub -c -i ID (-x 60 for 5.0)
    subscribes and exits (-E); a QoS 1 message published meanwhile is delivered when the same
    client id reconnects."""
    session = ["-c", "-i", f"cli-persist-{cli_version}", "-q", "1"] + (["-x", "60"] if cli_version == "5" else [])
    first = sub_proc(broker, ["-V", cli_version, *session, "-t", "persist/t", "-E"])
    rc, _ = first.finish()
    assert rc == 0
    pub_ok(broker, ["-V", cli_version, "-q", "1", "-t", "persist/t", "-m", "while-away"])
    again = sub_proc(broker, ["-V", cli_version, *session, "-t", "persist/t", "-C", "1", "-W", "10",
                              "-F", "%p|%q"])
    assert again.finish() == (0, ["while-away|1"])
