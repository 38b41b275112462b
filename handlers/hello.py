"""An OpenFaaS python3-http style function: ``handle(event, context)``."""


def handle(event, context):
    if event.method not in ("GET", "POST"):
        return {"statusCode": 405, "body": {"error": "Method not allowed"}}
    name = event.query.get("name") or event.body.decode("utf-8") or "world"
    return {
        "statusCode": 200,
        "body": {"greeting": f"Hello, {name}!", "hostname": context.hostname},
        "headers": [("X-Handled-By", "hello")],
    }
