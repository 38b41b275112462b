"""An OpenFaaS function returning what the request body names (the rows of issue 10)."""
import datetime
import json
from http import HTTPStatus


def handle(event, context):
    case = event.body.decode()
    if case == "httpstatus":
        return {"statusCode": HTTPStatus.ACCEPTED, "body": "queued"}
    if case == "text":
        return json.dumps({"temperature": 27})
    if case == "tuple":
        return "made", 201, {"X-Id": "7"}
    if case == "list":
        return [1, {"b": 2, "a": 1}]
    if case == "missing":
        return {"body": event.query["missing"]}
    if case == "vars":
        return {"body": {"event": sorted(vars(event)), "context": repr(context.__dict__)}}
    if case == "none":
        return {"body": None}
    if case == "date":
        return {"statusCode": "201", "body": {"at": datetime.date(2026, 1, 2)}}
    return {"body": f"unknown case {case!r}"}
