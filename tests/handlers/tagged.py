"""Answers with the body's first word (the rest is padding), after sleeping ``sleep`` seconds."""
import time


def handle(req):
    time.sleep(float(req.query.get("sleep", 0)))
    return {"body": req.body.split(maxsplit=1)[0].decode()}
