def handle(req):
    return {"status_code": 99, "body": "too low"}
