"""Misbehaves as the body says, after appending the body and its pid to the file named by the
query parameter ``file`` (when given):

``exit`` os._exit(7); ``segv`` a segmentation fault in C (ctypes); ``hog:MB`` allocates MB
mebibytes; ``spin`` burns CPU for ever; ``sleep:S`` sleeps S seconds; anything else answers.
"""
import ctypes
import os
import time


def handle(req):
    what = req.body.decode()
    path = req.query.get("file")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {os.getpid()}\n")
    if what == "exit":
        os._exit(7)
    if what == "segv":
        ctypes.string_at(0)
    if what.startswith("hog:"):
        block = bytearray(int(what[4:]) << 20)
        return {"body": f"allocated {len(block)} bytes"}
    if what == "spin":
        while True:
            pass
    if what.startswith("sleep:"):
        time.sleep(float(what[6:]))
    return {"body": {"pid": os.getpid()}}
