"""The servers the benchmark compares, each started against the cell's broker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from measure import HOST, ROOT, BENCH, ServerError, _pdeathsig, status_kib, stop_proc, venv_bin, wait_ready


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

    def stop(self) -> None:
        if self.alive():
            self.hwm_kib = max(self.hwm_kib, status_kib(self.proc.pid, "VmHWM"))
        stop_proc(self.proc, 15)  # the bridge drains for up to limits.shutdown_grace (10 s)
        self.proc = None


def raw(workdir: Path, port: int, qos: int) -> Server:
    topic = "bench/raw/echo"
    return Server("raw", topic, [venv_bin("python"), str(BENCH / "raw_echo.py"), HOST, str(port), topic],
                  workdir / f"raw-qos{qos}.log", 15)


def bridge(workdir: Path, port: int, qos: int, exe: str, *, name: str = "bridge", mode: str = "process",
           handler: str = "echo", handlers_dir: Path = ROOT / "handlers", processes: int | None = None,
           concurrency: int = 8) -> Server:
    """``iot-bridge run`` with one route ``bench/<name>`` at the cell's QoS; else the defaults."""
    topic = f"bench/{name}"
    workers = f"\n[workers]\nmode = \"{mode}\"\n" + (f"processes = {processes}\n" if processes else "")
    path = workdir / f"{name}-qos{qos}.toml"
    path.write_text(
        f'handlers_dir = "{handlers_dir}"\n\n'
        f'[mqtt]\nhost = "{HOST}"\nport = {port}\nclient_id = "bench-{name}-{os.getpid()}-qos{qos}"\n\n'
        f'[[routes]]\ntopic = "{topic}"\nhandler = "{handler}"\nqos = {qos}\nconcurrency = {concurrency}\n\n'
        '[replies]\nallowed_topics = ["bench/#"]\n'
        f'store = "{workdir / name}-state/replies.db"\n' + workers
    )
    return Server(name, topic, [exe, "run", "--config", str(path)], workdir / f"{name}-qos{qos}.log", 30)
