"""Raises what the body names from an ``async def``: a KeyboardInterrupt, SystemExit, or a
BaseException subclass that is not an Exception."""


class Abort(BaseException):
    pass


async def handle(req):
    what = req.body.decode()
    if what == "keyboard":
        raise KeyboardInterrupt
    if what == "exit":
        raise SystemExit(3)
    raise Abort("stop everything")
