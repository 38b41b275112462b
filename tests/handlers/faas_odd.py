"""OpenFaaS style, returning what the body names: ``strsub`` a header whose name and value
are a str subclass; ``status:N`` a werkzeug Response with status_code N; ``created`` the
status as http.HTTPStatus.CREATED."""
from http import HTTPStatus

from werkzeug.wrappers import Response


class Name(str):
    pass


def handle(event, context):
    what = event.body.decode()
    if what == "strsub":
        return "hello", 200, [(Name("X-Trace"), Name("1"))]
    if what.startswith("status:"):
        response = Response("odd")
        response.status_code = int(what[7:])
        return response
    if what == "created":
        return "made", HTTPStatus.CREATED
    return "plain"
