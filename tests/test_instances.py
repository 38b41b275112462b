"""Several bridges on one gateway: instances run from one config file (``--instance``,
``--state-dir``, as config/iot-bridge@.service starts them), and one bridge per state file
(bridge.filelock).  Real processes throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.filelock import FileLock
from tests.support.bridgeproc import ROOT, BridgeProcess
from tests.support.clients import rr
from tests.support.waiting import wait_for


def _second_exits_2(second: BridgeProcess) -> str:
    second.start(wait_ready=False)
    assert second.wait(20) == 2, second.log()
    return second.log()


def test_a_second_bridge_on_the_same_reply_store_exits_2_naming_it(make_bridge, broker, topic_prefix, tmp_path):
    store = tmp_path / "shared" / "replies.db"
    route = {"topic": f"{topic_prefix}/x", "handler": "inspect_event"}
    first = make_bridge([route], name="first", replies={"store": str(store)})
    second = make_bridge([route], name="second", replies={"store": str(store)}, start=False)
    log = _second_exits_2(second)
    assert f"replies.store: {store} is in use by another bridge (process {first.proc.pid})" in log
    assert rr(broker.port, f"{topic_prefix}/x", "still here")["status_code"] == 200  # the first serves on


def test_reply_stores_side_by_side_share_the_crash_guards_file_so_the_second_exits_2(make_bridge, topic_prefix,
                                                                                     tmp_path):
    route = {"topic": f"{topic_prefix}/x", "handler": "inspect_event"}
    first = make_bridge([route], name="first", replies={"store": str(tmp_path / "shared" / "a.db")})
    second = make_bridge([route], name="second", replies={"store": str(tmp_path / "shared" / "b.db")}, start=False)
    log = _second_exits_2(second)
    assert (f"replies.store: {tmp_path / 'shared' / 'attempts.db'} is in use by another bridge "
            f"(process {first.proc.pid})") in log


def test_a_second_bridge_on_the_same_outbox_exits_2_naming_it(make_bridge, broker, topic_prefix, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name in ("id", "secret"):
        (secrets / name).write_text("x\n")
        (secrets / name).chmod(0o600)
    outbox = tmp_path / "shared" / "outbox.db"
    route = {"topic": f"{topic_prefix}/props", "thing": {"space": "s", "thing_id": "t", "client_id_secret": "id",
                                                         "client_secret_secret": "secret"}}
    sections = {"secrets": {"dir": str(secrets)}, "outbox": {"path": str(outbox)},
                "iot_studio": {"api_url": "http://127.0.0.1:9"}}
    first = make_bridge([route], name="first", **sections)
    log = _second_exits_2(make_bridge([route], name="second", start=False, **sections))
    assert f"outbox.path: {outbox} is in use by another bridge (process {first.proc.pid})" in log


def test_instances_from_one_config_have_their_own_client_ids_and_state(broker, topic_prefix, tmp_path):
    """What iot-bridge@.service runs: one file, --instance %i --state-dir /var/lib/iot-bridge/%i."""
    config = {"handlers_dir": str(ROOT / "tests" / "handlers"),
              "mqtt": {"port": broker.port, "client_id": f"gw-{tmp_path.name}"[:40], "share_group": "gw"},
              "replies": {"allowed_topics": ["replies/#"]},
              "routes": [{"topic": f"{topic_prefix}/req", "handler": "served_by"}]}
    workdir = tmp_path / "etc"

    def instance(name: str, log: str) -> BridgeProcess:
        return BridgeProcess(workdir, config, env={"BRIDGE_NAME": name}, log_name=log, args=[
            "--instance", name, "--state-dir", str(tmp_path / "state" / name)])

    one, two = instance("1", "one.log"), instance("2", "two.log")
    started = [one.start()]
    try:
        started.append(two.start())
        client_id = config["mqtt"]["client_id"]
        assert f"as '{client_id}-1'" in one.log() and f"as '{client_id}-2'" in two.log()
        for name in ("1", "2"):
            assert (tmp_path / "state" / name / "state" / "replies.db.lock").read_text() == \
                f"{(one if name == '1' else two).proc.pid}\n"
        served = {rr(broker.port, f"{topic_prefix}/req", str(i))["body"]["by"] for i in range(6)}
        assert served == {"1", "2"}
        again = instance("1", "again.log")  # the same instance name twice: the same state files
        started.append(again)
        log = _second_exits_2(again)
        assert f"replies.store: {tmp_path / 'state' / '1' / 'state' / 'replies.db'} is in use" in log
    finally:
        for proc in started:
            proc.stop()


def test_a_malformed_shared_subscription_exits_2_naming_the_key(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": "$share/workers", "handler": "inspect_event"}], start=False)
    log = _second_exits_2(bridge)
    assert "routes[0].topic: Value error, a shared subscription is $share/<group>/<topic filter>" in log


# -- the lock itself ----------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from bridge.filelock import FileLock
    lock = FileLock(Path(sys.argv[1]), "replies.store")
    if sys.argv[2] == "fork":  # a child that outlives this process, as a function's subprocess may
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    print("locked", flush=True)
    sys.stdin.read()  # hold it until told to go
""")


def _holder(path: Path, mode: str = "hold") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_the_lock_is_held_by_one_process_and_freed_when_it_ends(tmp_path):
    path = tmp_path / "state" / "replies.db"
    holder = _holder(path)
    try:
        with pytest.raises(ConfigError) as info:
            FileLock(path, "replies.store")
        assert info.value.key == "replies.store"
        assert f"is in use by another bridge (process {holder.pid})" in str(info.value)
    finally:
        holder.kill()  # however it ends, the kernel drops its lock
        holder.wait()
    FileLock(path, "replies.store").release()


def test_a_child_process_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "replies.db"
    holder = _holder(path, "fork")
    child = int(subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True).stdout.split()[0])
    try:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(10)
        assert os.path.exists(f"/proc/{child}")  # the child lives on
        FileLock(path, "replies.store").release()  # yet the lock is free
    finally:
        os.kill(child, 9)
        wait_for(lambda: not os.path.exists(f"/proc/{child}") or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2],
                 5, "the child gone")
