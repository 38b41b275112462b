"""Measuring one server: the load generator, CPU and memory of process trees."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HOST = "127.0.0.1"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BENCH / "loadgen"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.1


class BenchError(Exception):
    """The benchmark could not run (not a property of the server measured)."""


class ServerError(Exception):
    """An echo server failed to start, reply, or stay up."""


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def venv_bin(name: str) -> str | None:
    cand = ROOT / ".venv" / "bin" / name
    if cand.exists():
        return str(cand)
    if name == "python":
        return sys.executable
    return shutil.which(name)


def build_loadgen() -> None:
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    cmd = ["cc", "-O2", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lmosquitto"]
    log("compiling: " + " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise BenchError(f"cannot compile the load generator:\n{res.stderr}")


def _pdeathsig() -> None:
    """Child side of Popen: get SIGTERM if this script dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def stop_proc(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


# ----------------------------------------------------------------------------- loadgen


def loadgen(port: int, topic: str, qos: int, inflight: int, size: int, warmup: float,
            duration: float, watch: dict[str, int | list[int]] | None = None,
            alone: dict[str, list[int]] | None = None) -> dict:
    """Run the load generator once; poll CPU (and RSS) of the ``watch`` processes and their
    descendants meanwhile (a list of pids, e.g. the bridges of a share group, is summed), and
    of the ``alone`` processes without their descendants (e.g. a daemon without its workers)."""
    cmd = [str(LOADGEN), HOST, str(port), topic, str(qos), str(inflight), str(size),
           f"{warmup:g}", f"{duration:g}"]
    watch = watch or {}
    samples: list[tuple[float, dict[str, int]]] = []
    peak_rss: dict[str, int] = {}
    trees = {name: [p for pid in (pids if isinstance(pids, list) else [pids]) for p in proc_tree(pid)]
             for name, pids in watch.items()}
    trees.update(alone or {})
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_pdeathsig)
    deadline = t_start + warmup + duration + 30
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"load generator did not finish: {' '.join(cmd)}")
            samples.append((now, {n: cpu_ticks(t) for n, t in trees.items()}))
            for name, tree in trees.items():
                rss = sum(status_kib(p, "VmRSS") for p in tree)
                peak_rss[name] = max(peak_rss.get(name, 0), rss)
            time.sleep(POLL_S)
        out, err = proc.communicate(timeout=5)
    finally:
        stop_proc(proc, 1)
    line = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        res = json.loads(line)
    except json.JSONDecodeError:
        raise BenchError(f"load generator output unreadable ({proc.returncode}): {out!r} {err!r}")
    # CPU of each watched process over (about) the measured window, in cores.
    if len(samples) >= 2:
        w0, w1 = t_start + warmup, t_start + warmup + duration
        inside = [s for s in samples if w0 <= s[0] <= w1] or samples
        a, b = inside[0], inside[-1]
        if b[0] - a[0] > 0.05:
            for name in trees:
                res[f"{name}_cpu_frac"] = round((b[1][name] - a[1][name]) / CLK_TCK / (b[0] - a[0]), 3)
    for name, kib in peak_rss.items():
        res[f"{name}_peak_rss_kib"] = kib
    return res


def wait_ready(port: int, topic: str, qos: int, proc: subprocess.Popen, name: str,
               logfile: Path, timeout: float) -> None:
    """Probe with short loadgen runs until ``topic`` is answered (or the server dies)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with status {proc.returncode} at start:\n"
                              + tail(logfile))
        last = loadgen(port, topic, qos, 1, 16, 0, 0.3)
        if last.get("count", 0) > 0:
            return
        time.sleep(0.2)
    why = "no reply"
    if last and last.get("stale"):
        why = "replies without the request's Correlation Data"
    raise ServerError(f"{name} not answering on {topic} after {timeout:g}s ({why}); "
                      f"last probe: {last}\n" + tail(logfile))


