"""Answers "hello world" with the headers the body names: ``framing`` a wrong Content-Length
and a Transfer-Encoding; ``space`` a name with a space; ``empty`` an empty name."""


def handle(req):
    what = req.body.decode()
    headers = {"framing": {"Content-Length": "3", "Transfer-Encoding": "chunked", "Connection": "close",
                           "X-Kept": "yes"},
               "space": {"Bad Header": "1"},
               "empty": {"": "1"}}.get(what, {})
    return {"headers": headers, "body": "hello world"}
