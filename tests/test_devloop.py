"""The edit loop: ``make run``'s watcher reloads edited functions and config; ``iot-bridge new``.

``make run`` runs ``python -m bridge.dev.run CONFIG``; the tests run that module the same way,
against a real broker, and call the functions with real clients (HTTP and mosquitto_rr).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.bridgeproc import ROOT, render_toml
from tests.support.broker import free_port
from tests.support.waiting import wait_for
from tests.support.web import wait_health

V1 = 'def handle(req):\n    return {"body": "version one"}\n'
V2 = 'def handle(req):\n    return {"body": "version two"}\n'  # the same size: a .pyc would match
BROKEN = 'def handle(req)\n    return {"body": "no colon"}\n'
IN_BYTES = len(V1.encode())


def _project(tmp_path: Path, port: int) -> tuple[Path, str]:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "greet.py").write_text(V1)
    http = f"127.0.0.1:{free_port()}"
    config = tmp_path / "bridge.toml"
    config.write_text(render_toml({
        "handlers_dir": "handlers",
        "mqtt": {"port": port, "client_id": f"devloop-{tmp_path.name}"[:60], "reconnect_min_delay": 0.1},
        "http": {"listen": http},
        "routes": [{"topic": "functions/python/greet", "handler": "greet", "reply_topic": "{topic}/reply"}],
    }))
    return config, f"http://{http}"


def _body(url: str) -> tuple[int, str]:
    answer = requests.post(url, data="x", timeout=10)
    return answer.status_code, answer.text


def test_make_run_reloads_edited_handlers_and_config(broker, tmp_path):
    config, base = _project(tmp_path, broker.port)
    out = tmp_path / "make-run.out"
    # As on a developer's machine, Python caches bytecode (__pycache__/*.pyc) of what it imports.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with open(out, "wb") as sink:
        devrun = subprocess.Popen([sys.executable, "-m", "bridge.dev.run", str(config)], cwd=tmp_path,
                                  stdout=sink, stderr=subprocess.STDOUT, env={**env, "PYTHONPATH": str(ROOT)})
    try:
        banner = wait_for(lambda: re.search(r"running as PID (\d+)", out.read_text()), 15, "the banner")
        pid = int(banner.group(1))
        text = out.read_text()
        assert f"Status page:   {base}/" in text and f"kill -HUP {pid}" in text
        wait_health(base, 200)
        assert _body(f"{base}/invoke/greet") == (200, "version one")

        # An edit that keeps the size within the same second (the mtime is put back as it was).
        greet = tmp_path / "handlers" / "greet.py"
        stat = greet.stat()
        greet.write_text(V2)
        os.utime(greet, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert len(V2.encode()) == IN_BYTES
        wait_for(lambda: _body(f"{base}/invoke/greet") == (200, "version two"), 15, "the new code")
        assert f"make run: handlers/greet.py modified; reloading (kill -HUP {pid})" in out.read_text()

        greet.write_text(BROKEN)  # reported at once, and the route answers 503 until fixed
        wait_for(lambda: _body(f"{base}/invoke/greet")[0] == 503, 15, "503 for a broken handler")
        assert "importing greet.py failed: SyntaxError" in out.read_text()
        greet.write_text(V1)
        wait_for(lambda: _body(f"{base}/invoke/greet") == (200, "version one"), 15, "the fixed code")

        # The config is watched too: `iot-bridge new` adds a function that answers at once.
        new = subprocess.run([sys.executable, "-m", "bridge.cli", "new", "shout", "--config", str(config)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert new.returncode == 0, new.stderr
        wait_for(lambda: _body(f"{base}/invoke/shout") == (200, "x"), 15, "the new function")
        assert "bridge.toml modified" in out.read_text()
        assert devrun.poll() is None and os.kill(pid, 0) is None  # one bridge all along
    finally:
        devrun.send_signal(signal.SIGTERM)
        assert devrun.wait(30) == 0


@pytest.mark.parametrize(("flags", "signature"), [
    ([], "def handle(req):"),
    (["--async"], "async def handle_async(req):"),
    (["--openfaas"], "def handle(event, context):"),
    (["--openfaas", "--async"], "async def handle(event, context):"),
])
def test_new_writes_a_function_and_its_route_and_the_printed_calls_work(broker, tmp_path, flags, signature):
    config, base = _project(tmp_path, broker.port)
    before = config.read_text()
    new = subprocess.run([sys.executable, "-m", "bridge.cli", "new", "greeter", *flags, "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert new.returncode == 0, new.stderr
    assert signature in (tmp_path / "handlers" / "greeter.py").read_text()
    assert config.read_text().startswith(before)  # appended: the user's comments and layout stay
    assert 'topic = "functions/python/greeter"' in config.read_text()
    assert 'reply_topic = "{topic}/reply"' in config.read_text()
    calls = [line.strip() for line in new.stdout.splitlines() if line.strip().startswith(("mosquitto_rr", "curl"))]
    assert len(calls) == 2 and "-W 5" in calls[0]

    bridge = subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(base, 200)
        for call in calls:  # exactly as printed, as a user would paste them
            ran = subprocess.run(shlex.split(call), capture_output=True, text=True, timeout=20)
            assert ran.returncode == 0, (call, ran.stderr)
            assert "hi" in ran.stdout, (call, ran.stdout)
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(20)

    again = subprocess.run([sys.executable, "-m", "bridge.cli", "new", "greeter", "--config", str(config)],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_make_run_keeps_its_state_out_of_config_and_git(tmp_path):
    from bridge.config import load_config

    config = load_config(ROOT / "config" / "bridge.toml")
    for path in (config.replies.store, config.outbox.path):
        assert path.is_relative_to(ROOT / "run"), path
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} would show in git status"


def test_readme_mosquitto_rr_examples_give_up_after_5_seconds():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.lstrip().startswith("mosquitto_rr")]
    assert lines and all(" -W 5" in line for line in lines), lines
