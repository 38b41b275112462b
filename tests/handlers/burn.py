"""Burns about 30 ms of CPU, then answers which process ran it and when (time.monotonic)."""
import os
import time


def handle(req):
    start = time.monotonic()
    cpu = time.thread_time()
    while time.thread_time() - cpu < 0.03:  # this call's CPU, not the process's
        pass
    return {"body": {"pid": os.getpid(), "start": start, "end": time.monotonic()}}
