"""Closed-loop request/reply benchmark: the bridge against a minimal paho echo, same broker.

    python bench/run.py [--quick] [--repeat N] [--warmup S] [--duration S]
                        [--servers raw,bridge] [--check-loadgen] [--bridge-exe PATH] [--keep]

For each QoS a private mosquitto is started (tests/support/broker.py, the repository's
mosquitto.conf, a free loopback port), then both echo servers:

* ``raw``: bench/raw_echo.py, paho-mqtt echoing to the MQTT v5 Response Topic;
* ``bridge``: ``iot-bridge run`` with the repository's handlers/ (function ``echo``) on the
  route ``bench/echo`` at that QoS;
* ``shared``: two such bridges in one share group (``[mqtt] share_group``, started as
  ``iot-bridge run --instance N``, as config/iot-bridge@.service does) on ``bench/shared/echo``:
  each request goes to one of them.  Its CPU figures are the sum over both processes.

Each cell (in-flight count x payload size) is measured with bench/loadgen (C, libmosquitto),
alternating the two servers, ``--repeat`` times; the median of each figure is reported.
Raw per-run results go to bench/results/latest.json.  See bench/README.md.

Exit status: 0 all targets met; 1 a target missed; 2 the bridge could not be measured (raw
figures still printed); 3 the benchmark itself failed (broker, load generator, raw echo).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from tests.support.broker import Broker  # noqa: E402

HOST = "127.0.0.1"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BENCH / "loadgen"
RESULTS = BENCH / "results" / "latest.json"
TOPICS = {"raw": "bench/raw/echo", "bridge": "bench/echo", "shared": "bench/shared/echo", "c": "bench/c/echo"}
SHARED_MEMBERS = 2
QOS_LEVELS = (0, 1)
INFLIGHTS = (1, 64)
PAYLOADS = (16, 4096)
# Targets: bridge msgs/s >= THROUGHPUT_MIN x raw with 64 in flight (QoS 0 and 1);
# bridge p50 <= P50_MAX x raw p50 with 1 in flight.
THROUGHPUT_MIN = 0.6
P50_MAX = 2.0
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
            duration: float, watch: dict[str, int | list[int]] | None = None) -> dict:
    """Run the load generator once; poll CPU (and RSS) of the ``watch`` processes (and their
    children; a list of pids is summed) meanwhile."""
    cmd = [str(LOADGEN), HOST, str(port), topic, str(qos), str(inflight), str(size),
           f"{warmup:g}", f"{duration:g}"]
    watch = watch or {}
    samples: list[tuple[float, dict[str, int]]] = []
    peak_rss: dict[str, int] = {}
    trees = {name: [p for pid in (pids if isinstance(pids, list) else [pids]) for p in proc_tree(pid)]
             for name, pids in watch.items()}
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
            for name in watch:
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


# ----------------------------------------------------------------------------- servers


class Server:
    def __init__(self, name: str, cmd: list[str], logfile: Path, ready_timeout: float) -> None:
        self.name = name
        self.cmd = cmd
        self.logfile = logfile
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.hwm_kib = 0

    @property
    def topic(self) -> str:
        return TOPICS[self.name]

    def start(self, port: int, qos: int) -> None:
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT,
                                         preexec_fn=_pdeathsig)
        wait_ready(port, self.topic, qos, self.proc, self.name, self.logfile, self.ready_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pids(self) -> int | list[int]:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.alive():
            self.hwm_kib = max(self.hwm_kib, status_kib(self.proc.pid, "VmHWM"))
        stop_proc(self.proc, 15)  # the bridge drains for up to limits.shutdown_grace (10 s)
        self.proc = None


class Group(Server):
    """Several bridge processes in one share group, measured as one server."""

    def __init__(self, name: str, cmds: list[list[str]], logfiles: list[Path], ready_timeout: float) -> None:
        super().__init__(name, cmds[0], logfiles[0], ready_timeout)
        self.members = [Server(f"{name}-{i + 1}", cmd, log, ready_timeout)
                        for i, (cmd, log) in enumerate(zip(cmds, logfiles))]

    def start(self, port: int, qos: int) -> None:
        for member in self.members:
            with open(member.logfile, "ab") as logf:
                member.proc = subprocess.Popen(member.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + self.ready_timeout
        for member in self.members:  # every member subscribed, not just the first to answer
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


def bridge_config(workdir: Path, port: int, qos: int, name: str = "bridge") -> Path:
    path = workdir / f"{name}-qos{qos}.toml"
    group = f'share_group = "bench-{os.getpid()}"\n' if name == "shared" else ""
    path.write_text(
        f'handlers_dir = "{ROOT / "handlers"}"\n\n'
        "[mqtt]\n"
        f'host = "{HOST}"\n'
        f"port = {port}\n"
        f'client_id = "bench-{name}-{os.getpid()}-qos{qos}"\n'
        f"{group}\n"
        "[[routes]]\n"
        f'topic = "{TOPICS[name]}"\n'
        'handler = "echo"\n'
        f"qos = {qos}\n\n"
        "[replies]\n"
        'allowed_topics = ["bench/#"]\n'
    )
    return path


# ----------------------------------------------------------------------------- main


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r.get("count", 0) > 0 and "error" not in r]
    if not ok:
        return None
    out = {k: median([r[k] for r in ok]) for k in ("msgs_per_s", "p50_ms", "p99_ms")}
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["runs"] = len(ok)
    for k in ("peak_rss_kib",):
        vals = [r.get(f"server_{k}") for r in ok if r.get(f"server_{k}")]
        if vals:
            out[k] = max(vals)
    # CPU time per reply, in microseconds, of the server's processes (all of them for a group).
    cpu = [r["server_cpu_frac"] / r["msgs_per_s"] * 1e6 for r in ok if r.get("server_cpu_frac") and r.get("msgs_per_s")]
    out["cpu_us_per_msg"] = median(cpu)
    out["broker_cpu_frac"] = median([r.get("broker_cpu_frac") for r in ok])
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="warm-up 0.3 s, measure 1 s")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell and server (median)")
    ap.add_argument("--warmup", type=float, help="seconds (default 1, --quick 0.3)")
    ap.add_argument("--duration", type=float, help="seconds measured (default 4, --quick 1)")
    ap.add_argument("--servers", default="raw,bridge,shared",
                    help=f"comma list of raw, bridge, shared ({SHARED_MEMBERS} bridges in one share group)")
    ap.add_argument("--check-loadgen", action="store_true",
                    help="also measure the load generator against its C echo (64 in flight)")
    ap.add_argument("--bridge-exe", help="the iot-bridge executable (default: the venv's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 4.0)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not set(names) <= {"raw", "bridge", "shared"} or not names:
        ap.error("--servers takes raw, bridge and/or shared")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    # SIGTERM (e.g. a CI timeout) must still run the cleanup below.
    signal.signal(signal.SIGTERM, _interrupt)

    build_loadgen()
    workdir = Path(tempfile.mkdtemp(prefix="iot-bridge-bench-"))
    results: dict = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "warmup_s": warmup, "duration_s": duration, "repeat": args.repeat,
            "cpus": os.cpu_count(), "git": _git_rev(), "servers": names,
        },
        "cells": {}, "bridge_error": None, "loadgen_check": {}, "bridge_vmhwm_kib": {},
    }
    bridge_error: str | None = None
    bridge_exe = args.bridge_exe or venv_bin("iot-bridge")
    if {"bridge", "shared"} & set(names) and not bridge_exe:
        bridge_error = "no iot-bridge executable (pip install -e . ?)"
    t_begin = time.monotonic()
    broker = None
    servers: dict[str, Server] = {}
    try:
        for qos in QOS_LEVELS:
            broker = Broker(workdir / f"broker-qos{qos}").start()
            port = broker.port
            watch_base = {"broker": broker.proc.pid}
            servers = {}
            if "raw" in names:
                servers["raw"] = Server("raw", [venv_bin("python"), str(BENCH / "raw_echo.py"),
                                                HOST, str(port), TOPICS["raw"]],
                                         workdir / f"raw-qos{qos}.log", 15)
            if "bridge" in names and bridge_error is None:
                cfg = bridge_config(workdir, port, qos)
                servers["bridge"] = Server("bridge", [bridge_exe, "run", "--config",
                                                      str(cfg)],
                                            workdir / f"bridge-qos{qos}.log", 30)
            if "shared" in names and bridge_error is None:
                cfg = bridge_config(workdir, port, qos, "shared")
                members = range(1, SHARED_MEMBERS + 1)
                servers["shared"] = Group("shared", [
                    [bridge_exe, "run", "--config", str(cfg), "--instance", str(n),
                     "--state-dir", str(workdir / f"shared-qos{qos}-{n}")] for n in members],
                    [workdir / f"shared-qos{qos}-{n}.log" for n in members], 30)
            for name, srv in list(servers.items()):
                log(f"[qos {qos}] starting {name} ...")
                try:
                    srv.start(port, qos)
                except ServerError as exc:
                    srv.stop()
                    del servers[name]
                    if name == "raw":
                        raise BenchError(str(exc)) from exc
                    bridge_error = str(exc)
            if bridge_error and {"bridge", "shared"} & set(names):
                log(f"BRIDGE NOT MEASURED: {bridge_error.splitlines()[0]}")

            for inflight in INFLIGHTS:
                for size in PAYLOADS:
                    key = f"qos{qos}/inflight{inflight}/{size}B"
                    cell = results["cells"].setdefault(
                        key, {"qos": qos, "inflight": inflight, "payload": size,
                              **{n: {"runs": []} for n in names}})
                    for rep in range(args.repeat):
                        order = list(servers)
                        if (rep + inflight + size // 4096) % 2:
                            order.reverse()
                        for name in order:
                            srv = servers.get(name)
                            if srv is None:
                                continue
                            if not srv.alive():
                                msg = f"{name} died (status {srv.proc.returncode}):\n" + tail(srv.logfile)
                                srv.stop()
                                del servers[name]
                                if name == "raw":
                                    raise BenchError(msg)
                                bridge_error = msg
                                log(f"BRIDGE STOPPED: {msg.splitlines()[0]}")
                                continue
                            res = loadgen(port, srv.topic, qos, inflight, size, warmup, duration,
                                          {**watch_base, "server": srv.pids})
                            cell[name]["runs"].append(res)
                            log(f"  {key:<24} {name:<6} {res.get('msgs_per_s', 0):>9.0f} msg/s"
                                f"  p50 {res.get('p50_ms', 0):7.3f} ms  p99 {res.get('p99_ms', 0):7.3f} ms"
                                f"  errors {res.get('errors', '?')}"
                                + (f"  ERROR {res['error']}" if "error" in res else ""))
            if args.check_loadgen:
                results["loadgen_check"].update(_check_loadgen(port, qos, warmup, duration,
                                                               workdir, watch_base))
            for name, srv in servers.items():
                srv.stop()
                if name == "bridge":
                    results["bridge_vmhwm_kib"][f"qos{qos}"] = srv.hwm_kib
            servers = {}
            broker.stop()
            broker = None
    except BenchError as exc:
        log(f"BENCHMARK FAILED: {exc}")
        return 3
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for srv in servers.values():
            srv.stop()
        if broker is not None:
            broker.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results["bridge_error"] = bridge_error
    results["meta"]["wall_s"] = round(time.monotonic() - t_begin, 1)
    for cell in results["cells"].values():
        for name in names:
            cell[name]["median"] = summarise(cell[name]["runs"])
    checks = _targets(results, names)
    results["targets"] = checks
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    _report(results, names, checks, bridge_error)
    print(f"\nper-run results: {RESULTS.relative_to(ROOT)}  (wall {results['meta']['wall_s']} s)")
    if {"bridge", "shared"} & set(names) and bridge_error:
        return 2
    return 1 if any(not c["pass"] for c in checks) else 0


def _check_loadgen(port: int, qos: int, warmup: float, duration: float, workdir: Path,
                   watch_base: dict[str, int]) -> dict:
    """The load generator against its own C echo: the ceiling of loadgen + broker here."""
    out = {}
    logfile = workdir / "c-echo.log"
    with open(logfile, "ab") as logf:
        proc = subprocess.Popen([str(LOADGEN), "echo", HOST, str(port), TOPICS["c"]],
                                stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
    try:
        wait_ready(port, TOPICS["c"], qos, proc, "C echo", logfile, 10)
        for size in PAYLOADS:
            res = loadgen(port, TOPICS["c"], qos, 64, size, warmup, duration,
                          {**watch_base, "server": proc.pid})
            out[f"qos{qos}/inflight64/{size}B"] = res
            log(f"  qos{qos}/inflight64/{size}B  C echo {res.get('msgs_per_s', 0):>9.0f} msg/s"
                f"  loadgen cpu {res.get('loadgen_cpu_frac')}  broker cpu {res.get('broker_cpu_frac')}")
    except ServerError as exc:
        log(f"C echo check failed: {exc}")
    finally:
        stop_proc(proc)
    return out


def _targets(results: dict, names: list[str]) -> list[dict]:
    if "bridge" not in names or "raw" not in names:
        return []
    checks = []
    for key, cell in results["cells"].items():
        raw, br = cell["raw"].get("median"), cell["bridge"].get("median")
        if cell["inflight"] == 64:
            r = ratio(br and br["msgs_per_s"], raw and raw["msgs_per_s"])
            checks.append({"cell": key, "target": f"bridge msgs/s >= {THROUGHPUT_MIN}x raw",
                           "value": r, "pass": r is not None and r >= THROUGHPUT_MIN})
        else:
            r = ratio(br and br["p50_ms"], raw and raw["p50_ms"])
            checks.append({"cell": key, "target": f"bridge p50 <= {P50_MAX}x raw",
                           "value": r, "pass": r is not None and r <= P50_MAX})
    return checks


def _report(results: dict, names: list[str], checks: list[dict], bridge_error: str | None) -> None:
    cols = ["cell", "raw msg/s", "bridge msg/s", "ratio", "raw p50", "bridge p50", "p50 ratio",
            "raw p99", "bridge p99", "bridge peak RSS"]
    rows = []
    notes = []
    for key, cell in results["cells"].items():
        raw = cell.get("raw", {}).get("median") or {}
        br = cell.get("bridge", {}).get("median") or {}
        rss = br.get("peak_rss_kib")
        rows.append([
            key,
            fmt(raw.get("msgs_per_s"), ".0f"), fmt(br.get("msgs_per_s"), ".0f"),
            fmt(ratio(br.get("msgs_per_s"), raw.get("msgs_per_s")), ".2f"),
            fmt(raw.get("p50_ms"), ".3f"), fmt(br.get("p50_ms"), ".3f"),
            fmt(ratio(br.get("p50_ms"), raw.get("p50_ms")), ".2f"),
            fmt(raw.get("p99_ms"), ".3f"), fmt(br.get("p99_ms"), ".3f"),
            "-" if not rss else f"{rss / 1024:.1f} MiB",
        ])
        for name in names:
            m = cell.get(name, {}).get("median")
            if m and m["errors"]:
                notes.append(f"{key} {name}: {m['errors']} errors (lost, timed-out or unmatched replies)")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print()
    print(f"msgs/s = replies per second (closed loop); p50/p99 in ms, send -> reply; "
          f"median of {results['meta']['repeat']} run(s), {results['meta']['duration_s']:g} s each")
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]))
    for n in notes:
        print("note: " + n)
    hwm = results.get("bridge_vmhwm_kib") or {}
    if hwm:
        print("bridge VmHWM at exit: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in hwm.items()))
    # Where the CPU goes, in cores (2 cores here is the whole machine).
    print("\nCPU during the measured window (cores): broker / echo server / loadgen")
    for key, cell in results["cells"].items():
        parts = []
        for name in names:
            runs = [r for r in cell.get(name, {}).get("runs", []) if "broker_cpu_frac" in r]
            if runs:
                parts.append(f"{name} {median([r['broker_cpu_frac'] for r in runs]):.2f}/"
                             f"{median([r.get('server_cpu_frac', 0) for r in runs]):.2f}/"
                             f"{median([r.get('loadgen_cpu_frac', 0) for r in runs]):.2f}")
        print(f"  {key:<24} " + "   ".join(parts))
    if "shared" in names and "bridge" in names:
        _report_shared(results)
    lc = results.get("loadgen_check") or {}
    if lc:
        print("\nload generator ceiling (C echo, 64 in flight):")
        for key, r in lc.items():
            raw = (results["cells"].get(key, {}).get("raw") or {}).get("median") or {}
            print(f"  {key:<24} {r.get('msgs_per_s', 0):>9.0f} msg/s  "
                  f"({fmt(ratio(r.get('msgs_per_s'), raw.get('msgs_per_s')), '.1f')}x raw echo)  "
                  f"cpu broker/echo/loadgen {r.get('broker_cpu_frac')}/{r.get('server_cpu_frac')}/"
                  f"{r.get('loadgen_cpu_frac')}")
    print()
    if "bridge" in names and bridge_error:
        print("BRIDGE NOT MEASURED (raw figures only): " + bridge_error.splitlines()[0])
        rest = bridge_error.splitlines()[1:]
        if rest:
            print("\n".join(rest))
    for c in checks:
        verdict = "PASS" if c["pass"] else ("FAIL" if c["value"] is not None else "N/A ")
        print(f"{verdict}  {c['cell']:<24} {c['target']:<28} ({fmt(c['value'], '.2f')}x)")


def _report_shared(results: dict) -> None:
    """1 bridge beside SHARED_MEMBERS bridges in one share group, CPU over all their processes."""
    n = SHARED_MEMBERS
    cols = ["cell", "1 bridge msg/s", f"{n} bridges msg/s", "ratio", "1 bridge p50", f"{n} bridges p50",
            "1 bridge CPU us/msg", f"{n} bridges CPU us/msg", "broker cores 1 / {n}".format(n=n)]
    rows = []
    for key, cell in results["cells"].items():
        one = (cell.get("bridge") or {}).get("median") or {}
        grp = (cell.get("shared") or {}).get("median") or {}
        rows.append([key, fmt(one.get("msgs_per_s"), ".0f"), fmt(grp.get("msgs_per_s"), ".0f"),
                     fmt(ratio(grp.get("msgs_per_s"), one.get("msgs_per_s")), ".2f"),
                     fmt(one.get("p50_ms"), ".3f"), fmt(grp.get("p50_ms"), ".3f"),
                     fmt(one.get("cpu_us_per_msg"), ".0f"), fmt(grp.get("cpu_us_per_msg"), ".0f"),
                     f"{fmt(one.get('broker_cpu_frac'), '.2f')} / {fmt(grp.get('broker_cpu_frac'), '.2f')}"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print(f"\nshare group: 1 bridge beside {n} bridges in one group (CPU per reply summed over the "
          f"bridges' processes; {os.cpu_count()} CPUs here)")
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _git_rev() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
