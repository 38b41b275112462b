"""Answers with everything the function saw."""


def handle(req):
    return {
        "body": {
            "method": req.method,
            "path": req.path,
            "topic": req.topic,
            "body": req.body.decode("utf-8", "replace"),
            "headers": {k: req.headers.getlist(k) for k in req.headers.keys()},
            "content_type": req.headers.get("content-type"),
            "query": {k: req.query.getlist(k) for k in req.query.keys()},
        }
    }
