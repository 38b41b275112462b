"""Summaries, targets and the printed tables of a benchmark run."""

from __future__ import annotations

import statistics

# Targets, for the bridge in its default configuration against the raw echo, same run:
THROUGHPUT_MIN = 0.8  # msgs/s with 64 in flight, at least this times raw
P50_MAX = 1.4  # p50 with 1 in flight, at most this times raw
CPU_MAX = 1.5  # CPU per message (the whole process tree), at most this times raw


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r.get("count", 0) > 0 and "error" not in r]
    if not ok:
        return None
    out = {k: median([r[k] for r in ok]) for k in ("msgs_per_s", "p50_ms", "p99_ms")}
    out["cpu_us"] = median([cpu_per_message(r) for r in ok])
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["runs"] = len(ok)
    vals = [r.get("server_peak_rss_kib") for r in ok if r.get("server_peak_rss_kib")]
    if vals:
        out["peak_rss_kib"] = max(vals)
    return out


def cpu_per_message(run: dict) -> float | None:
    """Microseconds of CPU of the server's whole process tree (workers included) per reply."""
    frac, rate = run.get("server_cpu_frac"), run.get("msgs_per_s")
    return frac / rate * 1e6 if frac is not None and rate else None


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: dict) -> list[dict]:
    checks = []
    for key, cell in results["cells"].items():
        raw, br = cell.get("raw", {}).get("median"), cell.get("bridge", {}).get("median")
        if raw is None or "bridge" not in cell:
            continue
        if cell["inflight"] == 64:
            r = ratio(br and br["msgs_per_s"], raw["msgs_per_s"])
            checks.append({"cell": key, "target": f"msgs/s >= {THROUGHPUT_MIN}x raw", "value": r,
                           "pass": r is not None and r >= THROUGHPUT_MIN})
        else:
            r = ratio(br and br["p50_ms"], raw["p50_ms"])
            checks.append({"cell": key, "target": f"p50 <= {P50_MAX}x raw", "value": r,
                           "pass": r is not None and r <= P50_MAX})
        r = ratio(br and br["cpu_us"], raw["cpu_us"])
        checks.append({"cell": key, "target": f"CPU/msg <= {CPU_MAX}x raw", "value": r,
                       "pass": r is not None and r <= CPU_MAX})
    return checks


def table(results: dict, names: list[str]) -> None:
    print(f"\nmsgs/s = replies per second (closed loop); p50/p99 send -> reply in ms; CPU = us of CPU per "
          f"reply, the server's whole process tree; x = against raw in the same cell; median of "
          f"{results['meta']['repeat']} run(s), {results['meta']['duration_s']:g} s each")
    cols = ["cell", "server", "msgs/s", "x", "p50", "x", "p99", "CPU us", "x", "peak RSS"]
    rows = []
    for key, cell in results["cells"].items():
        raw = (cell.get("raw") or {}).get("median") or {}
        for name in names:
            m = (cell.get(name) or {}).get("median")
            if not m:
                continue
            rows.append([key, name, fmt(m["msgs_per_s"], ".0f"), fmt(ratio(m["msgs_per_s"], raw.get("msgs_per_s")), ".2f"),
                         fmt(m["p50_ms"], ".3f"), fmt(ratio(m["p50_ms"], raw.get("p50_ms")), ".2f"),
                         fmt(m["p99_ms"], ".3f"), fmt(m["cpu_us"], ".1f"),
                         fmt(ratio(m["cpu_us"], raw.get("cpu_us")), ".2f"),
                         "-" if not m.get("peak_rss_kib") else f"{m['peak_rss_kib'] / 1024:.1f} MiB"])
    _print(cols, rows)
    if "shared" in names:
        print("shared = 2 bridges in one share group beside bridge (1): msgs/s, and CPU per reply summed "
              "over both bridges' process trees (see docs/performance.md, \"More than one bridge\")")


def burst_table(burst: dict) -> None:
    if not burst:
        return
    print("\nCPU-bound function (30 ms of CPU per call), 8 requests in flight, QoS 1:")
    rows = [[name, fmt(r.get("msgs_per_s"), ".1f"), fmt(1000 / r["msgs_per_s"] if r.get("msgs_per_s") else None, ".1f"),
             fmt(r.get("server_cpu_frac"), ".2f")] for name, r in burst.items()]
    _print(["server", "calls/s", "ms per call", "cores used"], rows)


def floor(results: dict) -> None:
    """With one request in flight: what a process round trip alone costs (raw-process against
    raw), and what the bridge's default mode adds on top of it."""
    lines = []
    for key, cell in results["cells"].items():
        raw, hop, br = (((cell.get(n) or {}).get("median") or {}) for n in ("raw", "raw-process", "bridge"))
        if cell["inflight"] != 1 or not raw or not hop:
            continue
        line = (f"  {key:<24} raw-process: CPU {fmt(ratio(hop['cpu_us'], raw['cpu_us']), '.2f')}x raw, "
                f"p50 {fmt(ratio(hop['p50_ms'], raw['p50_ms']), '.2f')}x")
        if br:
            line += (f"; bridge: CPU {fmt(ratio(br['cpu_us'], hop['cpu_us']), '.2f')}x raw-process, "
                     f"p50 {fmt(ratio(br['p50_ms'], hop['p50_ms']), '.2f')}x")
        lines.append(line)
    if lines:
        print("\nThe floor of running functions in another process (raw-process: raw, each payload through a "
              "child process and back), 1 in flight:")
        print("\n".join(lines))


def verdicts(checks: list[dict]) -> None:
    print()
    for c in checks:
        verdict = "PASS" if c["pass"] else ("FAIL" if c["value"] is not None else "N/A ")
        print(f"{verdict}  {c['cell']:<24} bridge {c['target']:<24} ({fmt(c['value'], '.2f')}x)")


def _print(cols: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])] +
                         [v.rjust(w) for v, w in zip(r[2:], widths[2:])]))
