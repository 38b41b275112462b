"""Answers with the request body and which bridge ran it (the environment's BRIDGE_NAME);
the query parameter ``sleep`` (seconds) makes it slower."""
import os
import time


def handle(req):
    time.sleep(float(req.query.get("sleep", 0)))
    return {"body": {"body": req.body.decode(), "by": os.environ.get("BRIDGE_NAME", "?")}}
