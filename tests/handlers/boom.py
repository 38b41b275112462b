def handle(req):
    value = req.body.decode("utf-8")
    raise ValueError(f"cannot use {len(value)} bytes")
