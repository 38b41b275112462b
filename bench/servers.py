"""The servers the benchmark compares, each started against the cell's broker."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from measure import HOST, ROOT, BENCH, ServerError, _pdeathsig, status_kib, stop_proc, tail, venv_bin, wait_ready


class Server:
    """One echo server: a command, the topic it answers, its log file."""

    def __init__(self, name: str, topic: str, cmd: list[str], logfile: Path, ready_timeout: float) -> None:
        self.name = name
        self.topic = topic
        self.cmd = cmd
        self.logfile = logfile
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.hwm_kib = 0

    def start(self, port: int, qos: int) -> None:
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=_pdeathsig)
        wait_ready(port, self.topic, qos, self.proc, self.name, self.logfile, self.ready_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pids(self) -> int | list[int]:
        """What the CPU and memory figures are taken over (with descendants)."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.alive():
            self.hwm_kib = max(self.hwm_kib, status_kib(self.proc.pid, "VmHWM"))
        stop_proc(self.proc, 15)  # the bridge drains for up to limits.shutdown_grace (10 s)
        self.proc = None


class Group(Server):
    """Bridges in one share group, measured as one server: CPU and memory over all of them."""

    def __init__(self, members: list[Server]) -> None:
        first = members[0]
        super().__init__(first.name.rsplit("-", 1)[0], first.topic, first.cmd, first.logfile, first.ready_timeout)
        self.members = members

    def start(self, port: int, qos: int) -> None:
        for member in self.members:
            with open(member.logfile, "ab") as logf:
                member.proc = subprocess.Popen(member.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + self.ready_timeout
        for member in self.members:  # every member subscribed, not only the first to answer
            while "ready: subscribed" not in member.logfile.read_text(errors="replace"):
                if not member.alive() or time.monotonic() > deadline:
                    raise ServerError(f"{member.name} not ready:\n" + tail(member.logfile))
                time.sleep(0.1)
        self.proc = self.members[0].proc
        wait_ready(port, self.topic, qos, self.proc, self.name, self.logfile, self.ready_timeout)

    def alive(self) -> bool:
        return all(m.alive() for m in self.members)

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        self.hwm_kib = max([self.hwm_kib] + [m.hwm_kib for m in self.members])
        self.proc = None


def raw(workdir: Path, port: int, qos: int, *, through_process: bool = False) -> Server:
    """The raw echo; ``through_process``: each payload through a child process and back."""
    name = "raw-process" if through_process else "raw"
    topic = f"bench/{name}/echo"
    extra = ["--through-process"] if through_process else []
    return Server(name, topic, [venv_bin("python"), str(BENCH / "raw_echo.py"), HOST, str(port), topic, *extra],
                  workdir / f"{name}-qos{qos}.log", 15)


NODE_RED = ROOT / ".venv" / "node-red" / "node_modules" / ".bin" / "node-red"  # make bench-nodered


def nodered(workdir: Path, port: int, qos: int) -> Server:
    """Node-RED 4: mqtt in -> a function node setting the topic to the response topic -> mqtt
    out (which echoes the correlation data), MQTT v5, at the cell's QoS."""
    topic = "bench/nodered/echo"
    user = workdir / f"nodered-qos{qos}"
    user.mkdir(parents=True, exist_ok=True)
    flows = (BENCH / "nodered" / "flows.json").read_text()
    for key, value in {"HOST": HOST, "PORT": str(port), "PID": str(os.getpid()), "TOPIC": topic, "QOS": str(qos)}.items():
        flows = flows.replace(f"@{key}@", value)
    (user / "flows.json").write_text(flows)
    (user / "settings.js").write_text((BENCH / "nodered" / "settings.js").read_text())
    return Server("nodered", topic, [str(NODE_RED), "-u", str(user), "-s", str(user / "settings.js")],
                  workdir / f"nodered-qos{qos}.log", 30)


def bridge(workdir: Path, port: int, qos: int, exe: str, *, name: str = "bridge", mode: str = "process",
           handler: str = "echo", handlers_dir: Path = ROOT / "handlers", processes: int | None = None,
           concurrency: int = 8, share_group: str | None = None) -> Server:
    """``iot-bridge run`` with one route ``bench/<name>`` at the cell's QoS; else the defaults."""
    topic = f"bench/{name}"
    workers = f"\n[workers]\nmode = \"{mode}\"\n" + (f"processes = {processes}\n" if processes else "")
    group = f'share_group = "{share_group}"\n' if share_group else ""
    # In a group every instance reads this file: its state goes under its --state-dir instead.
    store = "" if share_group else f'store = "{workdir / name}-state/replies.db"\n'
    path = workdir / f"{name}-qos{qos}.toml"
    path.write_text(
        f'handlers_dir = "{handlers_dir}"\n\n'
        f'[mqtt]\nhost = "{HOST}"\nport = {port}\nclient_id = "bench-{name}-{os.getpid()}-qos{qos}"\n{group}\n'
        f'[[routes]]\ntopic = "{topic}"\nhandler = "{handler}"\nqos = {qos}\nconcurrency = {concurrency}\n\n'
        '[replies]\nallowed_topics = ["bench/#"]\n' + store + workers
    )
    return Server(name, topic, [exe, "run", "--config", str(path)], workdir / f"{name}-qos{qos}.log", 30)


def shared(workdir: Path, port: int, qos: int, exe: str, *, members: int = 2, name: str = "shared") -> Group:
    """``members`` bridges in one share group, each run from one config file as
    ``iot-bridge run --instance N --state-dir DIR`` (what config/iot-bridge@.service does)."""
    one = bridge(workdir, port, qos, exe, name=name, share_group=f"bench-{os.getpid()}")
    return Group([Server(f"{name}-{n}", one.topic,
                         [*one.cmd, "--instance", str(n), "--state-dir", str(workdir / f"{name}-qos{qos}-{n}")],
                         workdir / f"{name}-qos{qos}-{n}.log", one.ready_timeout) for n in range(1, members + 1)])
