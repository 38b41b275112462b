"""Starts a thread that never ends (not a daemon thread) and answers at once."""
import threading
import time


async def handle(req):
    threading.Thread(target=time.sleep, args=(3600,), name="lingering").start()
    return {"body": "started"}
