"""Sleeps for the number of seconds in the body, then answers with the body."""
import time


def handle(req):
    seconds = float(req.body.decode() or 0)
    time.sleep(seconds)
    return {"body": f"slept {seconds}"}
