"""Echo: the IoT Studio template's synchronous skeleton."""


def handle(req):
    return {
        "status_code": 200,
        "body": req.body.decode("utf-8"),
    }
