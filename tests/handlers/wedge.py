"""Blocks the bridge's event loop (an async function calling time.sleep) for the number of
seconds in the body; answers with when the block began and ended (time.monotonic, the
system-wide CLOCK_MONOTONIC, comparable across processes)."""
import time


async def handle(req):
    seconds = float(req.body.decode() or 0)
    start = time.monotonic()
    time.sleep(seconds)  # deliberately not awaited: nothing else on the loop runs meanwhile
    return {"body": {"start": start, "end": time.monotonic()}}
