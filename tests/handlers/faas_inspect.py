def handle(event, context):
    return {
        "statusCode": 201,
        "response": {"method": event.method, "hostname": context.hostname,
                     "name": event.query.get("name")},
        "headers": [("Location", "https://www.example.com/")],
    }
