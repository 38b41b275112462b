def handle(req):
    return ["not", "a", "dict"]
