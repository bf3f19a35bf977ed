"""Fixtures for the Starling MQTT protocol conformance suite.

* ``broker_factory(**opts)`` starts a broker (Starling or Mosquitto, see
  STARLING_TEST_BROKER) on 127.0.0.1 and a free port; every broker started by a
  test is killed by PID at teardown, also on failure.
* ``broker`` is a broker with default options.
* ``paho(...)`` / ``raw(...)`` create clients that are closed at teardown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rawmqtt  # noqa: E402
from helpers import BROKER_KIND, IS_MOSQUITTO, Broker, PahoClient, SubProc  # noqa: E402


def pytest_configure(config):
    if BROKER_KIND not in ("starling", "mosquitto"):
        raise pytest.UsageError(
            f"STARLING_TEST_BROKER must be 'starling' or 'mosquitto', not {BROKER_KIND!r}")
    config.addinivalue_line(
        "markers",
        "starling_only: Starling-specific behaviour, or a case where Mosquitto 2.0.11 deviates "
        "from the specification; skipped only when STARLING_TEST_BROKER=mosquitto")


def pytest_report_header(config):
    return f"broker under test: {BROKER_KIND}"


def pytest_collection_modifyitems(config, items):
    if not IS_MOSQUITTO:
        return  # in starling mode nothing is ever skipped
    if os.environ.get("STARLING_TEST_RUN_ALL") == "1":
        return  # suite development: see how Mosquitto fails the starling_only tests
    for item in items:
        marker = item.get_closest_marker("starling_only")
        if marker:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"starling_only: {why or 'not applicable to Mosquitto 2.0.11'}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, f"rep_{when}", None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def broker_factory(request, tmp_path):
    """Start brokers: ``broker_factory(max_inflight=2, ...)`` -> Broker."""
    started: list[Broker] = []

    def start(**opts) -> Broker:
        workdir = tmp_path / f"broker{len(started)}"
        workdir.mkdir()
        b = Broker(opts, workdir)
        started.append(b)
        try:
            b.start()
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        return b

    yield start
    for b in started:
        b.kill()
    if _failed(request):
        for b in started:
            print(f"\n----- {b.kind} log (port {b.port}) -----\n{b.log_tail(120)}")


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture
def paho():
    """``paho(broker, client_id, version=5|4, clean=..., ...)`` -> connected PahoClient."""
    clients: list[PahoClient] = []

    def make(broker: Broker, client_id: str = "", version: int = 5, **kw) -> PahoClient:
        c = PahoClient(broker, client_id, version, connect=False, **{k: v for k, v in kw.items()
                                                                     if k not in ("connect", "expect_success")})
        clients.append(c)
        if kw.get("connect", True):
            c.connect(expect_success=kw.get("expect_success", True))
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def raw():
    """``raw(broker, version=5|4)`` -> unconnected RawClient (TCP connected)."""
    clients: list[rawmqtt.RawClient] = []

    def make(broker: Broker, version: int = 5) -> rawmqtt.RawClient:
        c = rawmqtt.RawClient(broker.host, broker.port, version)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def sub_proc():
    """``sub_proc(broker, args)`` -> a background mosquitto_sub (SubProc), killed at teardown."""
    procs: list[SubProc] = []

    def start(broker, args: list[str]) -> SubProc:
        p = SubProc(broker, args)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
