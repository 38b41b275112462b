"""Closed-loop request/reply benchmark: the bridge against a minimal paho echo, same broker.

    python bench/run.py [--quick] [--repeat N] [--warmup S] [--duration S]
                        [--servers raw,raw-process,bridge,bridge-thread,shared] [--no-burst]
                        [--check-loadgen]
                        [--bridge-exe PATH] [--keep]

For each QoS a private mosquitto is started (tests/support/broker.py, the repository's
mosquitto.conf, a free loopback port), then the echo servers:

* ``raw``: bench/raw_echo.py, paho-mqtt echoing to the MQTT v5 Response Topic, no
  ``Properties`` object per reply: the least a paho client can do;
* ``raw-process``: the same echo, each payload making a round trip through a child process
  first: the least any server pays for running functions in another process;
* ``bridge``: ``iot-bridge run`` in its default configuration (worker processes) with the
  repository's handlers/ (function ``echo``) on the route ``bench/bridge``;
* ``bridge-thread``: the same with ``[workers] mode = "thread"``;
* ``shared``: two bridges in one share group (``[mqtt] share_group``, run from one config as
  ``iot-bridge run --instance N``), each request going to one of them: its CPU per reply is
  summed over both bridges' process trees.

Each cell (in-flight count x payload size) is measured with bench/loadgen (C, libmosquitto),
alternating the servers, ``--repeat`` times; the median of each figure is reported, with the
CPU per reply of each server's whole process tree.  Then a CPU-bound function (30 ms per call)
is measured with 1 and 2 worker processes.  Raw per-run results go to
bench/results/latest.json.  See bench/README.md.

Exit status: 0 all targets met; 1 a target missed; 2 a bridge could not be measured (the other
figures still printed); 3 the benchmark itself failed (broker, load generator, raw echo).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT, BenchError, LOADGEN, HOST, ServerError, build_loadgen, log, loadgen, stop_proc, tail, venv_bin, wait_ready, _pdeathsig
import report
import servers as srv_kinds

sys.path.insert(0, str(ROOT))
from tests.support.broker import Broker  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.json"
QOS_LEVELS = (0, 1)
INFLIGHTS = (1, 64)
PAYLOADS = (16, 4096)
SERVERS = ("raw", "raw-process", "bridge", "bridge-thread", "shared", "nodered")
# Node-RED is an optional peer: measured by default once `make bench-nodered` installed it.
DEFAULT_SERVERS = [s for s in SERVERS if s != "nodered" or srv_kinds.NODE_RED.exists()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="warm-up 0.3 s, measure 1 s")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell and server (median)")
    ap.add_argument("--warmup", type=float, help="seconds (default 1, --quick 0.3)")
    ap.add_argument("--duration", type=float, help="seconds measured (default 4, --quick 1)")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help=f"comma list of {', '.join(SERVERS)} (nodered: after `make bench-nodered`)")
    ap.add_argument("--no-burst", action="store_true", help="skip the CPU-bound function with 1 and 2 workers")
    ap.add_argument("--check-loadgen", action="store_true",
                    help="also measure the load generator against its C echo (64 in flight)")
    ap.add_argument("--bridge-exe", help="the iot-bridge executable (default: the venv's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 4.0)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not names or not set(names) <= set(SERVERS):
        ap.error(f"--servers takes {', '.join(SERVERS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    signal.signal(signal.SIGTERM, _interrupt)  # e.g. a CI timeout: the cleanup below still runs

    build_loadgen()
    workdir = Path(tempfile.mkdtemp(prefix="iot-bridge-bench-"))
    exe = args.bridge_exe or venv_bin("iot-bridge")
    results: dict = {
        "meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "warmup_s": warmup,
                 "duration_s": duration, "repeat": args.repeat, "cpus": os.cpu_count(), "git": _git_rev(),
                 "servers": names},
        "cells": {}, "errors": {}, "burst": {}, "loadgen_check": {},
    }
    t_begin = time.monotonic()
    try:
        for qos in QOS_LEVELS:
            with Broker(workdir / f"broker-qos{qos}") as broker:
                _matrix(results, names, broker, qos, exe, workdir, args.repeat, warmup, duration)
                if args.check_loadgen:
                    results["loadgen_check"].update(_check_loadgen(broker, qos, warmup, duration, workdir))
        if not args.no_burst and exe:
            with Broker(workdir / "broker-burst") as broker:
                results["burst"] = _burst(broker, exe, workdir, warmup, max(duration, 3.0), results["errors"])
    except BenchError as exc:
        log(f"BENCHMARK FAILED: {exc}")
        return 3
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results["meta"]["wall_s"] = round(time.monotonic() - t_begin, 1)
    for cell in results["cells"].values():
        for name in names:
            cell[name]["median"] = report.summarise(cell[name]["runs"])
    checks = report.targets(results)
    results["targets"] = checks
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report.table(results, names)
    report.burst_table(results["burst"])
    report.floor(results)
    for name, error in results["errors"].items():
        print(f"\n{name.upper()} NOT MEASURED: {error}")
    report.verdicts(checks)
    print(f"\nper-run results: {RESULTS.relative_to(ROOT)}  (wall {results['meta']['wall_s']} s)")
    if results["errors"]:
        return 2
    return 1 if any(not c["pass"] for c in checks) else 0


def _servers(names: list[str], workdir: Path, port: int, qos: int, exe: str | None) -> dict:
    out = {}
    for name in names:
        if name in ("raw", "raw-process"):
            out[name] = srv_kinds.raw(workdir, port, qos, through_process=name == "raw-process")
        elif name == "nodered":
            out[name] = srv_kinds.nodered(workdir, port, qos)
        elif exe and name == "shared":
            out[name] = srv_kinds.shared(workdir, port, qos, exe)
        elif exe:
            out[name] = srv_kinds.bridge(workdir, port, qos, exe, name=name,
                                         mode="thread" if name == "bridge-thread" else "process")
    return out


def _matrix(results: dict, names: list[str], broker: Broker, qos: int, exe: str | None, workdir: Path,
            repeat: int, warmup: float, duration: float) -> None:
    servers = _servers(names, workdir, broker.port, qos, exe)
    try:
        for name, srv in list(servers.items()):
            log(f"[qos {qos}] starting {name} ...")
            try:
                srv.start(broker.port, qos)
            except ServerError as exc:
                srv.stop()
                del servers[name]
                if name == "raw":
                    raise BenchError(str(exc)) from exc
                results["errors"][name] = str(exc)
        for inflight in INFLIGHTS:
            for size in PAYLOADS:
                key = f"qos{qos}/inflight{inflight}/{size}B"
                cell = results["cells"].setdefault(key, {"qos": qos, "inflight": inflight, "payload": size,
                                                         **{n: {"runs": []} for n in names}})
                for rep in range(repeat):
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
                            results["errors"][name] = msg
                            continue
                        res = loadgen(broker.port, srv.topic, qos, inflight, size, warmup, duration,
                                      {"broker": broker.proc.pid, "server": srv.pids})
                        cell[name]["runs"].append(res)
                        log(f"  {key:<24} {name:<13} {res.get('msgs_per_s', 0):>9.0f} msg/s"
                            f"  p50 {res.get('p50_ms', 0):7.3f} ms  p99 {res.get('p99_ms', 0):7.3f} ms"
                            f"  cpu {report.fmt(report.cpu_per_message(res), '.1f')} us/msg"
                            f"  errors {res.get('errors', '?')}" + (f"  ERROR {res['error']}" if "error" in res else ""))
    finally:
        for srv in servers.values():
            srv.stop()


def _burst(broker: Broker, exe: str, workdir: Path, warmup: float, duration: float, errors: dict) -> dict:
    """A function burning 30 ms of CPU per call, 8 calls in flight, with 1 and 2 worker processes."""
    out = {}
    for processes in (1, 2):
        name = f"burn-{processes}p"
        srv = srv_kinds.bridge(workdir, broker.port, 1, exe, name=name, handler="burn",
                               handlers_dir=ROOT / "tests" / "handlers", processes=processes)
        try:
            srv.start(broker.port, 1)
            out[name] = loadgen(broker.port, srv.topic, 1, 8, 16, warmup, duration,
                                {"broker": broker.proc.pid, "server": srv.proc.pid})
            log(f"  burst {name}: {out[name].get('msgs_per_s', 0):.1f} calls/s, "
                f"{out[name].get('server_cpu_frac')} cores")
        except ServerError as exc:
            errors[name] = str(exc)
        finally:
            srv.stop()
    return out


def _check_loadgen(broker: Broker, qos: int, warmup: float, duration: float, workdir: Path) -> dict:
    """The load generator against its own C echo: the ceiling of loadgen + broker here."""
    out = {}
    logfile = workdir / "c-echo.log"
    topic = "bench/c/echo"
    with open(logfile, "ab") as logf:
        proc = subprocess.Popen([str(LOADGEN), "echo", HOST, str(broker.port), topic],
                                stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
    try:
        wait_ready(broker.port, topic, qos, proc, "C echo", logfile, 10)
        for size in PAYLOADS:
            res = loadgen(broker.port, topic, qos, 64, size, warmup, duration,
                          {"broker": broker.proc.pid, "server": proc.pid})
            out[f"qos{qos}/inflight64/{size}B"] = res
            log(f"  qos{qos}/inflight64/{size}B  C echo {res.get('msgs_per_s', 0):>9.0f} msg/s"
                f"  cpu {report.fmt(report.cpu_per_message(res), '.1f')} us/msg"
                f"  loadgen cpu {res.get('loadgen_cpu_frac')}  broker cpu {res.get('broker_cpu_frac')}")
    except ServerError as exc:
        log(f"C echo check failed: {exc}")
    finally:
        stop_proc(proc)
    return out


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
