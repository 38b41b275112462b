"""Sort a py-spy profile of the bridge into the buckets docs/performance.md reports.

    py-spy record --gil -r 500 -f raw -o daemon.txt -p <daemon pid> -d 6
    py-spy record --gil -r 500 -f raw -o worker.txt -p <worker pid> -d 6
    python bench/buckets.py daemon.txt worker.txt --cpu-us 58,20

``--gil`` keeps the samples in which the process runs Python code (not those blocked in a
system call or waiting), so each bucket's share times the process's user CPU per message
(``--cpu-us``, one figure per file, from ``bench/run.py`` or /proc) estimates its µs per
message.  A sample goes to the first bucket whose marker appears in its stack, innermost
frame first.
"""

from __future__ import annotations

import argparse
from collections import Counter

# (bucket, markers): a marker is a substring of a py-spy frame ("function (file:line)").
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("JSON reply encoding", ("_json_reply", "_headers_json", "json/")),
    ("reply topic decision", ("_reply_topic",)),
    ("timeout timer per request", ("call_later", "Dispatcher.started", "TimerHandle")),
    ("statistics and metrics", ("stats.py", "prometheus_client")),
    ("publish: packing the reply", ("publish (mqttclient.py", "Client.publish", "_send_publish", "PublishProperties",
                                    "encode_reply", "pack_publish")),
    ("PUBACKs (QoS 1)", ("_handle_pubackcomp", "Ledger.published", "Client.ack")),
    ("writing sockets", ("loop_write", "_packet_write", "Pump._flush", "Pump.flush", "Channel.send",
                         "WorkerProcess.flush", "_sock_send")),
    ("hand-off to the worker and back (frames, pickling)", ("wire.py", "WorkerProcess", "ProcessExecutor",
                                                            "Crew.", "Channel.", "child.py")),
    ("reading and parsing MQTT", ("read_packet", "_packet_read", "packets.py", "_sock_recv", "Pump._read")),
    ("the function and its result rules", ("local.py", "contract/", "handlers/", "functions.py")),
    ("routing, Event, ledger", ("dispatch.py", "delivery.py", "lanes.py", "codec.py", "sessions.py", "link.py")),
    ("event loop", ("asyncio/", "uvloop", "selectors.py")),
]


def buckets(path: str) -> tuple[int, Counter[str]]:
    total, counts = 0, Counter[str]()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")[::-1]  # innermost first
            total += int(n)
            counts[_bucket(frames)] += int(n)
    return total, counts


def _bucket(frames: list[str]) -> str:
    for frame in frames:
        for name, markers in BUCKETS:
            if any(m in frame for m in markers):
                return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", help="py-spy raw files (record -f raw)")
    parser.add_argument("--cpu-us", help="user CPU µs per message of each profiled process, comma-separated")
    args = parser.parse_args()
    cpu = [float(x) for x in args.cpu_us.split(",")] if args.cpu_us else [0.0] * len(args.profiles)
    merged: Counter[str] = Counter()
    for path, us in zip(args.profiles, cpu, strict=True):
        total, counts = buckets(path)
        for name, n in counts.items():
            merged[name] += n / total * us if us else n / total * 100
    unit = "µs/msg" if args.cpu_us else "% (summed over files)"
    for name, value in merged.most_common():
        print(f"{value:7.1f} {unit}  {name}")


if __name__ == "__main__":
    main()
