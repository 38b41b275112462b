"""The sync twin of interrupt.py."""
from interrupt import Abort


def handle(req):
    what = req.body.decode()
    if what == "keyboard":
        raise KeyboardInterrupt
    if what == "exit":
        raise SystemExit(3)
    raise Abort("stop everything")
