"""Where a bridge's CPU goes: the daemon against its worker processes, per reply.

    python bench/split.py [--server bridge|raw|raw-process] [--mode process|thread] [--qos 0]
                          [--inflight 1] [--size 16] [--duration 4] [--repeat 3] [--against DIR]

One private mosquitto (the repository's mosquitto.conf, a free port), one bridge with the
``echo`` function, bench/loadgen as in ``make bench``; prints the daemon's and the workers'
CPU time per reply (µs) for each run, then the medians.

``--server raw-process``: the same split for the floor instead (bench/raw_echo.py
``--through-process``: its main process against the child each payload goes through);
``--server raw``: the paho echo itself, for the ratio.

``--against DIR``: a second checkout of the bridge (e.g. ``git worktree add /tmp/before
HEAD~1``), run with ``PYTHONPATH=DIR`` and alternated with this one, run by run: what a
change to the daemon or the workers bought, measured in the same minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from measure import CLK_TCK, ROOT, build_loadgen, loadgen, proc_tree, venv_bin
import servers as srv_kinds

sys.path.insert(0, str(ROOT))
from tests.support.broker import Broker  # noqa: E402


def measure(broker: Broker, workdir: Path, tree: str | None, args: argparse.Namespace,
            name: str) -> tuple[float, float, float]:
    """One run: (msgs/s, daemon µs per reply, workers µs per reply).  ``name`` is the bridge's
    own (its client id and state): each run starts on a fresh session."""
    if args.server == "bridge":
        exe = venv_bin("iot-bridge")
        assert exe is not None, "no .venv/bin/iot-bridge: run `make test` or `make run` once"
        srv = srv_kinds.bridge(workdir, broker.port, args.qos, exe, mode=args.mode, name=name)
    else:
        srv = srv_kinds.raw(workdir, broker.port, args.qos, through_process=args.server == "raw-process")
    env = os.environ.copy()
    if tree:
        os.environ["PYTHONPATH"] = tree
    try:
        srv.start(broker.port, args.qos)
        pid = srv.pids
        assert isinstance(pid, int)
        workers = [p for p in proc_tree(pid) if p != pid]
        res = loadgen(broker.port, srv.topic, args.qos, args.inflight, args.size, 1.0, args.duration,
                      {"all": pid}, {"daemon": [pid], "workers": workers})
    finally:
        srv.stop()
        os.environ.clear()
        os.environ.update(env)
    rate = res["msgs_per_s"]
    return rate, res["daemon_cpu_frac"] / rate * 1e6, res.get("workers_cpu_frac", 0.0) / rate * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="bridge", choices=("bridge", "raw", "raw-process"))
    ap.add_argument("--mode", default="process", choices=("process", "thread"))
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", help="another checkout's root, alternated with this one")
    args = ap.parse_args()
    build_loadgen()
    trees = {"this": None} if not args.against else {"this": None, "against": str(Path(args.against).resolve())}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="iot-bridge-split-") as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        try:
            for run in range(args.repeat):
                order = list(trees) if run % 2 == 0 else list(reversed(trees))
                for name in order:
                    rate, daemon, workers = measure(broker, Path(tmp), trees[name], args, f"split-{name}-{run}")
                    figures[name].append((rate, daemon, workers))
                    print(f"run {run + 1} {name:<8} {rate:8.0f} msgs/s  daemon {daemon:6.1f} µs  workers {workers:6.1f} µs",
                          flush=True)
        finally:
            broker.stop()
    what = f"{args.mode} mode" if args.server == "bridge" else f"{args.server} (daemon: its main process, workers: its child)"
    print(f"\nmedians, {what}, QoS {args.qos}, {args.inflight} in flight, {args.size} B, "
          f"{args.repeat} run(s) of {args.duration:g} s (CPU per reply; clock tick {1e6 / CLK_TCK:.0f} µs):")
    for name, runs in figures.items():
        rate, daemon, workers = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"  {name:<8} {rate:8.0f} msgs/s  daemon {daemon:6.1f} µs  workers {workers:6.1f} µs")


if __name__ == "__main__":
    main()
