"""systemd integration: sd_notify (READY/STOPPING/STATUS), the event-loop watchdog, the unit.

The daemon runs as a real subprocess with ``NOTIFY_SOCKET`` pointing at a datagram socket the
test binds, exactly as systemd would; every datagram is timestamped on arrival and the
sender's PID is taken from the kernel (``SO_PASSCRED``), which ``NotifyAccess=main`` checks.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bridge.config import LimitsConfig
from bridge.systemd import Notifier, socket_address
from tests.support.bridgeproc import ROOT
from tests.support.clients import pub, rr
from tests.support.waiting import file_lines

UNIT = ROOT / "config" / "iot-bridge.service"
TEMPLATE = ROOT / "config" / "iot-bridge@.service"
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # linux/prctl.h, Linux 6.3+


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() on arrival
    pid: int  # sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifyListener:
    """The service manager's side of ``$NOTIFY_SOCKET``: collects datagrams on a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.received: list[Datagram] = []
        self._cond = threading.Condition()
        self._closed = False
        self.explain: Callable[[], str] = lambda: ""  # e.g. the bridge's log, for failures
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (TimeoutError, OSError):
                continue
            at = time.monotonic()
            pid = next((struct.unpack("3i", d[:12])[0] for level, kind, d in anc
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), -1)
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            with self._cond:
                self.received.append(Datagram(at, pid, fields))
                self._cond.notify_all()

    def with_field(self, key: str, value: str = "1") -> list[Datagram]:
        with self._cond:
            return [d for d in self.received if d.fields.get(key) == value]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"no {what} within {timeout}s; got {self.received}\n{self.explain()}")

    def wait_field(self, key: str, value: str = "1", count: int = 1, timeout: float = 15.0,
                   after: float = 0.0) -> list[Datagram]:
        """Wait for ``count`` datagrams setting ``key=value`` that arrived after ``after``."""
        hits = lambda: [d for d in self.with_field(key, value) if d.at > after]  # noqa: E731
        self.wait_for(lambda: len(hits()) >= count, timeout, f"{count} x {key}={value}")
        return hits()

    def wait_silence(self, seconds: float, timeout: float = 10.0) -> None:
        """Wait until nothing has arrived for ``seconds`` (the last datagram is that old)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (quiet := time.monotonic() - (self.received[-1].at if self.received else 0)) < seconds:
                if time.monotonic() > deadline:
                    raise AssertionError(f"never {seconds}s of silence within {timeout}s")
                self._cond.wait(seconds - quiet)  # a new datagram wakes us and restarts the count

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[str, NotifyListener]]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    listener = NotifyListener(str(path))
    yield str(path), listener
    listener.close()


def test_ready_only_once_subscribed_then_stopping_and_exit_0(make_bridge, broker, topic_prefix, notify):
    path, listener = notify
    topic = f"{topic_prefix}/inspect"
    bridge = make_bridge([{"topic": topic, "handler": "inspect_event"}], start=False,
                         env={"NOTIFY_SOCKET": path})
    listener.explain = bridge.log
    bridge.start(wait_ready=False)

    ready = listener.wait_field("READY")[0]
    # The subscription exists the moment READY=1 is out: a request sent now is answered
    # (a fresh session, so one sent before the SUBACK would have been dropped by the broker).
    assert rr(broker.port, topic, "hello")["status_code"] == 200
    assert "ready: subscribed to 1 topic filter(s)" in bridge.log()
    assert ready.fields["STATUS"] == "serving: subscribed to 1 topic filter(s)"
    assert ready.pid == bridge.proc.pid  # NotifyAccess=main accepts only the main process

    bridge.signal(signal.SIGTERM)
    stopping = listener.wait_field("STOPPING")[0]
    assert bridge.wait() == 0
    assert stopping.at > ready.at and stopping.pid == bridge.proc.pid
    assert stopping.fields["STATUS"].startswith("stopping:")
    assert len(listener.with_field("READY")) == 1
    assert listener.with_field("WATCHDOG") == []  # no WATCHDOG_USEC, no pings


def test_sighup_reload_is_bracketed_by_reloading_and_ready(make_bridge, broker, topic_prefix, notify):
    path, listener = notify
    topic = f"{topic_prefix}/inspect"
    bridge = make_bridge([{"topic": topic, "handler": "inspect_event"}], env={"NOTIFY_SOCKET": path})
    listener.explain = bridge.log
    first = listener.wait_field("READY")[0]

    bridge.signal(signal.SIGHUP)
    again = listener.wait_field("READY", after=first.at)[0]
    reloading = listener.with_field("RELOADING")
    assert len(reloading) == 1 and first.at < reloading[0].at <= again.at
    assert "MONOTONIC_USEC" in reloading[0].fields and again.fields["STATUS"] == "serving"
    assert rr(broker.port, topic, "after reload")["status_code"] == 200


def test_watchdog_pings_every_half_interval(make_bridge, topic_prefix, notify):
    path, listener = notify
    bridge = make_bridge([{"topic": f"{topic_prefix}/x", "handler": "inspect_event"}],
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"})
    listener.explain = bridge.log
    pings = listener.wait_field("WATCHDOG", count=10, timeout=15)
    gaps = [b.at - a.at for a, b in zip(pings, pings[1:])]
    # 0.3 s apart: well inside the 0.6 s WatchdogSec (a loaded 2-core machine delays a timer
    # by a tenth of a second now and then), and not a busy loop.
    assert 0.2 < sum(gaps) / len(gaps) < 0.4, gaps
    assert max(gaps) < 0.6, gaps


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_watchdog_keeps_pinging_while_a_function_blocks_its_loop(make_bridge, broker, topic_prefix, notify, mode):
    """An async function calling time.sleep blocks only the loop it runs on: never the one
    serving MQTT and pinging the watchdog (in a worker process, or a thread of its own)."""
    path, listener = notify
    topic = f"{topic_prefix}/wedge"
    bridge = make_bridge([{"topic": topic, "handler": "wedge"}], workers={"mode": mode},
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    listener.explain = bridge.log
    listener.wait_field("WATCHDOG", count=3)
    window = rr(broker.port, topic, "1.5")["body"]  # blocked for 1.5 s, over seven times WatchdogSec
    start, end = window["start"], window["end"]
    assert end - start >= 1.5
    pings = [d.at for d in listener.with_field("WATCHDOG") if start <= d.at <= end]
    gaps = [b - a for a, b in zip([start, *pings], [*pings, end])]
    assert max(gaps) < 0.2, f"the watchdog went quiet while a function blocked its loop: {gaps}"


def test_watchdog_abort_dumps_the_function_that_hangs(make_bridge, broker, topic_prefix, notify, tmp_path):
    """What the unit's WatchdogSec + PYTHONFAULTHANDLER=1 give an operator in the journal when
    the bridge is aborted: every thread's stack, the function's among them (thread mode)."""
    path, listener = notify
    topic = f"{topic_prefix}/record"
    started = tmp_path / "started.txt"
    bridge = make_bridge([{"topic": topic, "handler": "record"}], workers={"mode": "thread"},
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "PYTHONFAULTHANDLER": "1"})
    listener.explain = bridge.log
    listener.wait_field("WATCHDOG", count=3)
    pub(broker.port, topic, "hang", props=[("publish", "user-property", "query", f"file={started}&sleep=30")])
    file_lines(started, 1)
    bridge.signal(signal.SIGABRT)  # systemd's default WatchdogSignal
    assert bridge.wait() == -signal.SIGABRT
    log = bridge.log()
    assert "Fatal Python error: Aborted" in log
    assert f"{os.sep}record.py\", line" in log, log


def test_unreachable_notify_socket_is_logged_once_and_serving_goes_on(make_bridge, broker, topic_prefix, tmp_path):
    topic = f"{topic_prefix}/inspect"
    bridge = make_bridge([{"topic": topic, "handler": "inspect_event"}],
                         env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "100000"})
    time.sleep(0.3)  # the point: several failed watchdog pings happen meanwhile
    assert rr(broker.port, topic, "still serving")["status_code"] == 200
    bridge.signal(signal.SIGTERM)
    assert bridge.wait() == 0
    assert bridge.log().count("cannot notify systemd") == 1


def test_abstract_namespace_socket() -> None:
    name = f"iot-bridge-test-{os.getpid()}-{time.monotonic_ns()}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    listener = NotifyListener(b"\0" + name.encode())
    try:
        notifier = Notifier("@" + name)
        assert notifier.notify_ready("two\nlines")
        got = listener.wait_field("READY")[0]
        assert got.fields == {"READY": "1", "STATUS": "two lines"} and got.pid == os.getpid()
    finally:
        listener.close()


def test_reloading_brackets_a_reload_with_ready_even_on_failure(notify) -> None:
    path, listener = notify
    notifier = Notifier(path)
    with pytest.raises(RuntimeError), notifier.reloading("reloading", done="reload failed"):
        raise RuntimeError("bad config")
    ready = listener.wait_field("READY")[0]
    reloading = listener.with_field("RELOADING")[0]
    assert reloading.at <= ready.at and ready.fields["STATUS"] == "reload failed"
    stamp = int(reloading.fields["MONOTONIC_USEC"])
    assert abs(stamp - time.monotonic_ns() // 1000) < 5_000_000
    notifier.close()


def test_disabled_without_notify_socket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    notifier = Notifier(None, watchdog_usec=200000)
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert not notifier.notify_ready("x") and not notifier.watchdog_ping()
    assert not Notifier("vsock:2:1234").enabled  # unsupported form: off, with a warning
    assert "not a socket path" in caplog.text


def _verify_copy(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this checkout's entry point, which exists here."""
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "iot-bridge").exists():
        pytest.skip("the iot-bridge entry point is not installed in this environment")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/iot-bridge/.venv/bin", str(venv_bin)))
    return copy


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda u: u.name)
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path, unit: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    copy = _verify_copy(tmp_path, unit)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    about_unit = [l for l in (out.stdout + out.stderr).splitlines() if copy.name in l]
    assert out.returncode == 0 and about_unit == [], out.stdout + out.stderr


def _settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_file_settings() -> None:
    settings = _settings(UNIT)
    one = {k: v[-1] for k, v in settings.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/opt/iot-bridge/.venv/bin/iot-bridge run --config /etc/iot-bridge/bridge.toml"
    assert one["WatchdogSec"] == "30" and one["Restart"] == "on-failure"
    grace = LimitsConfig.model_fields["shutdown_grace"].default
    assert float(one["TimeoutStopSec"]) >= grace + 10
    assert one["DynamicUser"] == "yes" and one["StateDirectory"] == "iot-bridge"
    assert "mqtt-password:/etc/iot-bridge/secrets/mqtt-password" in settings["LoadCredential"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "LockPersonality",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "MemoryDenyWriteExecute"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert one["MemoryMax"] == "1G"  # the whole service; workers are the kernel's first choice past it


def test_template_unit_runs_each_instance_with_its_own_client_id_and_state() -> None:
    plain, template = _settings(UNIT), _settings(TEMPLATE)
    one = {k: v[-1] for k, v in template.items()}
    assert one["ExecStart"] == ("/opt/iot-bridge/.venv/bin/iot-bridge run --config /etc/iot-bridge/bridge.toml "
                                "--instance %i --state-dir %S/iot-bridge/%i")
    assert one["StateDirectory"] == "iot-bridge/%i"
    assert one["SyslogIdentifier"] == "iot-bridge@%i"
    # Everything else (notify, watchdog, restart policy, credentials, sandbox) as the single unit.
    differ = {"Description", "ExecStart", "StateDirectory", "SyslogIdentifier"}
    assert {k: v for k, v in template.items() if k not in differ} == {k: v for k, v in plain.items() if k not in differ}
    grace = LimitsConfig.model_fields["shutdown_grace"].default
    assert float(one["TimeoutStopSec"]) >= 2 * grace + 5  # leaving the share group, then draining


def test_bridge_serves_under_memory_deny_write_execute(make_bridge, broker, topic_prefix, tmp_path, monkeypatch):
    """MemoryDenyWriteExecute=yes, reproduced with the kernel's own W^X switch (PR_SET_MDWE),
    which like the unit's setting is inherited across fork and exec."""
    probe = subprocess.run([sys.executable, "-c", f"import ctypes,sys; sys.exit(ctypes.CDLL(None)."
                            f"prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0)"])
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    wrapper = tmp_path / "python-mdwe"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import ctypes, os, sys\n"
        f"if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
        "    sys.exit('PR_SET_MDWE failed')\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    check = subprocess.run([str(wrapper), "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                           capture_output=True, text=True)
    assert "Permission denied" in check.stderr, "W^X is not enforced: the test would prove nothing"

    monkeypatch.setattr(sys, "executable", str(wrapper))  # BridgeProcess launches sys.executable
    topic = f"{topic_prefix}/inspect"
    make_bridge([{"topic": topic, "handler": "inspect_event"}])
    assert rr(broker.port, topic, "w^x")["status_code"] == 200
