"""Authentication with a password file: files made by Debian's `mosquitto_passwd` are read as they
are, `starling passwd` writes files Mosquitto reads too, and every refusal has its CONNACK code per
protocol version. Anonymous access is off as soon as a password file is configured."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import rawmqtt as r
from helpers import HOST, TIMEOUT, starling_bin, wait_for

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
# CONNACK codes: v5 reason codes, 3.1.1 return codes. A wrong user name or password is 0x86 / 4
# (as EMQX and HiveMQ answer; Mosquitto 2.0.11 says 0x87 / 5), an anonymous client where anonymous
# access is off 0x87 / 5.
CODES_DIFFER = pytest.mark.starling_only("Mosquitto 2.0.11 answers a wrong password with 0x87 / 5")
BAD_CREDENTIALS = {V5: 0x86, V311: 4}
NOT_AUTHORIZED = {V5: 0x87, V311: 5}


def mosquitto_passwd(path: Path, user: str, password: str, *extra: str) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd not found: apt-get install mosquitto (scripts/install-test-deps.sh does)")
    create = [] if path.exists() else ["-c"]
    subprocess.run([tool, *create, *extra, "-b", str(path), user, password], check=True,
                   capture_output=True, timeout=30)


def starling_passwd(path: Path, user: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(starling_bin()), "passwd", *extra, str(path), user],
                          input=password + "\n", text=True, capture_output=True, timeout=60)


@pytest.fixture
def passwd_file(tmp_path) -> Path:
    """alice (the default $7$ PBKDF2) and bob ($6$ SHA-512), written by mosquitto_passwd."""
    path = tmp_path / "passwd"
    mosquitto_passwd(path, "alice", "alice-secret")
    mosquitto_passwd(path, "bob", "bob-secret", "-H", "sha512")
    text = path.read_text()
    assert "alice:$7$" in text and "bob:$6$" in text, text
    return path


@CODES_DIFFER
@both_versions
def test_users_of_a_mosquitto_passwd_file_connect_and_others_are_refused(broker_factory, raw, passwd_file, version):
    b = broker_factory(admin=True, password_file=passwd_file, allow_anonymous=False)
    for user, password in [("alice", "alice-secret"), ("bob", "bob-secret")]:
        c = raw(b, version)
        c.connect(f"ok-{user}", username=user, password=password.encode())
        c.ping()
    for user, password in [("alice", "bob-secret"), ("mallory", "x"), ("alice", "")]:
        c = raw(b, version)
        ack = c.connect(f"bad-{user}", username=user, password=password.encode(), expect_success=False)
        assert ack.reason == BAD_CREDENTIALS[version], (user, ack)
        assert c.recv_until_closed(TIMEOUT) == []
    c = raw(b, version)
    ack = c.connect("anonymous", expect_success=False)
    assert ack.reason == NOT_AUTHORIZED[version], ack
    counters = b.counters()
    assert counters["auth_allowed"] == 2 and counters["auth_refused"] == 4, counters


@pytest.mark.starling_only("the verification cache and its counter")
def test_a_reconnect_is_served_from_the_verification_cache(broker_factory, raw, passwd_file):
    b = broker_factory(admin=True, password_file=passwd_file, allow_anonymous=False)
    for _ in range(3):
        c = raw(b, V5)
        c.connect("again", username="alice", password=b"alice-secret")
        c.disconnect()
    assert b.counters()["auth_cache_hits"] == 2
    # A wrong password is never served from it.
    c = raw(b, V5)
    ack = c.connect("again", username="alice", password=b"alice-secreT", expect_success=False)
    assert ack.reason == 0x86


@CODES_DIFFER
def test_anonymous_access_is_explicit(broker_factory, raw, passwd_file):
    b = broker_factory(password_file=passwd_file, allow_anonymous=True)
    raw(b, V5).connect("anonymous")
    c = raw(b, V5)
    ack = c.connect("named", username="alice", password=b"wrong", expect_success=False)
    assert ack.reason == 0x86, "a user name still needs its password"


@CODES_DIFFER
def test_paho_connects_with_a_password_and_is_refused_without(broker_factory, paho, passwd_file):
    b = broker_factory(password_file=passwd_file, allow_anonymous=False)
    ok = paho(b, client_id="paho-alice", username="alice", password="alice-secret")
    assert ok.connack[1] == 0
    refused = paho(b, client_id="paho-bad", username="alice", password="nope", expect_success=False)
    assert refused.connack[1] == 0x86


@pytest.mark.starling_only("the starling passwd tool")
def test_starling_passwd_writes_files_both_brokers_read(broker_factory, raw, tmp_path):
    path = tmp_path / "passwd"
    done = starling_passwd(path, "carol", "carol-secret")
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    assert text.startswith("carol:$7$") and "carol-secret" not in text, text
    b = broker_factory(password_file=path, allow_anonymous=False)
    raw(b, V5).connect("carol", username="carol", password=b"carol-secret")
    # Mosquitto reads the same file: copying it over works both ways.
    m = broker_factory(kind="mosquitto", password_file=path, allow_anonymous=False)
    raw(m, V5).connect("carol-on-mosquitto", username="carol", password=b"carol-secret")
    ack = raw(m, V5).connect("carol-wrong", username="carol", password=b"x", expect_success=False)
    assert ack.reason in (0x86, 0x87), ack


@pytest.mark.starling_only("reloading the password file on SIGHUP")
def test_sighup_reloads_the_password_file_and_a_bad_one_is_refused(broker_factory, raw, passwd_file):
    b = broker_factory(password_file=passwd_file, allow_anonymous=False)
    ack = raw(b, V5).connect("dave", username="dave", password=b"dave-secret", expect_success=False)
    assert ack.reason == 0x86
    mosquitto_passwd(passwd_file, "dave", "dave-secret")
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b"password file reloaded" in b.log_bytes(), what="the reload")
    raw(b, V5).connect("dave", username="dave", password=b"dave-secret")
    # A file that no longer parses is refused and the loaded one stays.
    passwd_file.write_text(passwd_file.read_text() + "eve:plaintext\n")
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b"password file not reloaded" in b.log_bytes(), what="the refusal")
    raw(b, V5).connect("dave-again", username="dave", password=b"dave-secret")


@pytest.mark.starling_only("Starling's admin API")
def test_the_admin_api_reloads_and_reports_a_refused_file(broker_factory, raw, passwd_file):
    token = "test-admin-token-0123456789"
    b = broker_factory(admin=True, admin_token=token, password_file=passwd_file, allow_anonymous=False)

    def reload(with_token: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if with_token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://{HOST}:{b.admin_port}/api/v1/reload", data=b"{}",
                                     method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, json.loads(body) if body.startswith(b"{") else {}

    assert reload(with_token=False)[0] == 401
    mosquitto_passwd(passwd_file, "erin", "erin-secret")
    assert reload() == (200, {"reloaded": True, "password_file_users": 3})
    raw(b, V5).connect("erin", username="erin", password=b"erin-secret")
    passwd_file.write_text(passwd_file.read_text() + "frank\n")
    status, body = reload()
    assert status == 422 and body["reloaded"] is False and "line 4" in body["error"], body
    raw(b, V5).connect("erin-again", username="erin", password=b"erin-secret")


@pytest.mark.starling_only("Starling's configuration errors")
def test_a_bad_password_file_stops_the_broker_naming_the_line(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("# users\nalice:plaintext\n")
    done = subprocess.run([str(starling_bin()), "--listen", f"{HOST}:0", "--password-file", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert "line 2" in done.stderr and "alice" in done.stderr, done.stderr
