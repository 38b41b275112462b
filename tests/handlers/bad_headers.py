"""Answers with a header MQTT cannot carry as a user property, chosen by the body: ``big`` (a
value over 65,535 bytes), ``surrogate`` (a lone surrogate), ``ctype`` (in the content type)."""


def handle(req):
    what = req.body.decode()
    if what == "big":
        return {"headers": {"X-Big": "v" * 70000}, "body": "x"}
    if what == "surrogate":
        return {"headers": {"X-Bad": "\udcff"}, "body": "x"}
    return {"headers": {"Content-Type": "text/\ud800"}, "body": "x"}
