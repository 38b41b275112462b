"""Tries to take the process's signals: ignore SIGTERM, make SIGHUP fatal (sync or async by
entry point), and answers what happened."""
import signal


def _take():
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        return {"body": "taken"}
    except ValueError as exc:  # not the main thread
        return {"status_code": 500, "body": f"refused: {exc}"}


def handle(req):
    return _take()


async def handle_async(req):
    return _take()
