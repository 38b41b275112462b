def handle(req):
    text = req.body.decode("utf-8")
    return {"body": text.upper()}
