"""Appends the first word of the body to the file named by $BRIDGE_TEST_RUNLOG (one line per
run), sleeps for the seconds given as the second word if any, and answers the first word.
For MQTT 3.1.1 tests: no user properties to carry a query string."""
import os
import time


def handle(req):
    words = req.body.decode().split()
    with open(os.environ["BRIDGE_TEST_RUNLOG"], "a") as f:
        f.write(words[0] + "\n")
    if len(words) > 1:
        time.sleep(float(words[1]))
    return {"body": words[0]}
