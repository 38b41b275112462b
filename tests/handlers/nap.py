"""Sleeps for the seconds in the query parameter ``sleep`` (default 0), then answers which
process and thread ran it and when it started and ended (time.monotonic)."""
import os
import threading
import time


def handle(req):
    start = time.monotonic()
    time.sleep(float(req.query.get("sleep", 0)))
    return {"body": {"pid": os.getpid(), "thread": threading.get_ident(), "start": start,
                     "end": time.monotonic()}}
