"""Appends each body to the file named by the query parameter ``file``, then answers."""
import time


def handle(req):
    with open(req.query["file"], "a") as f:
        f.write(req.body.decode() + "\n")
    time.sleep(float(req.query.get("sleep", 0)))
    return {"body": req.body.decode()}
