"""Memory under a long run: 1,000,000 QoS 1 requests through the bridge in its default configuration.

    python bench/soak.py [--requests N] [--inflight N]     (make soak)

A private mosquitto and ``iot-bridge run`` (the repository's handlers/, function ``echo``, QoS 1),
driven by bench/loadgen with 64 requests in flight.  The RSS of the bridge's processes (the
daemon, and the daemon with its worker processes) is read after the first 10,000 requests and
at the end; the bridge passes when the daemon and the whole tree each grew by at most 5 MiB.
Exit status 0 pass, 1 grew more, 3 the run itself failed.  Not part of ``make test``: it takes
a few minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT, BenchError, ServerError, build_loadgen, log, loadgen, proc_tree, status_kib, venv_bin
import servers

sys.path.insert(0, str(ROOT))
from tests.support.broker import Broker  # noqa: E402

FIRST = 10_000
GROWTH_MAX_KIB = 5 * 1024


def rss(pid: int) -> tuple[int, int]:
    """VmRSS in KiB of the daemon, and of the daemon with its children."""
    return status_kib(pid, "VmRSS"), sum(status_kib(p, "VmRSS") for p in proc_tree(pid))


def drive(port: int, topic: str, count: int, inflight: int) -> tuple[int, int]:
    """Run the load generator until ``count`` replies were counted; (replies, errors)."""
    done = errors = 0
    rate = 20000.0  # a first guess, above what this machine does: the first run stays short
    while done < count:
        seconds = max(0.3, min(60.0, (count - done) / rate))
        res = loadgen(port, topic, 1, inflight, 16, 0, seconds)
        if res.get("count", 0) == 0:
            raise BenchError(f"no replies: {res}")
        done += res["count"] + res.get("warmup_replies", 0)
        errors += res.get("errors", 0)
        rate = res["msgs_per_s"]
        log(f"  {done:>9} answered  ({rate:.0f}/s, errors {errors})")
    return done, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--inflight", type=int, default=64)
    args = ap.parse_args(argv)
    build_loadgen()
    workdir = Path(tempfile.mkdtemp(prefix="iot-bridge-soak-"))
    exe = venv_bin("iot-bridge")
    try:
        with Broker(workdir / "broker") as broker:
            srv = servers.bridge(workdir, broker.port, 1, exe or "iot-bridge")
            srv.start(broker.port, 1)
            try:
                t0 = time.monotonic()
                first, _ = drive(broker.port, srv.topic, FIRST, args.inflight)
                early = rss(srv.proc.pid)
                total, errors = drive(broker.port, srv.topic, args.requests - first, args.inflight)
                late = rss(srv.proc.pid)
                wall = time.monotonic() - t0
            finally:
                srv.stop()
    except (BenchError, ServerError) as exc:
        log(f"SOAK FAILED: {exc}")
        return 3
    growth = (late[0] - early[0], late[1] - early[1])
    print(f"\n{first + total} QoS 1 requests in {wall:.0f} s, {errors} errors")
    print(f"daemon RSS after {first}: {early[0] / 1024:.1f} MiB, at the end: {late[0] / 1024:.1f} MiB "
          f"({growth[0] / 1024:+.1f} MiB)")
    print(f"daemon + workers RSS after {first}: {early[1] / 1024:.1f} MiB, at the end: {late[1] / 1024:.1f} MiB "
          f"({growth[1] / 1024:+.1f} MiB)")
    ok = max(growth) <= GROWTH_MAX_KIB and errors == 0
    print(("PASS" if ok else "FAIL") + f"  RSS growth <= {GROWTH_MAX_KIB // 1024} MiB and no errors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
