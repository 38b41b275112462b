def handle(req):
    return {"body": bytes(range(256)), "headers": {"Content-Type": "application/octet-stream"}}
