import logging
import sys

log = logging.getLogger("my_logger")


def handle(req):
    log.debug("DEBUG-LINE-SHOULD-NOT-APPEAR")
    log.info("info from chatty")
    print("stderr from chatty", file=sys.stderr)
    return {"body": "ok"}
