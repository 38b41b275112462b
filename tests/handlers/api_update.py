"""Writes the body's JSON object to the stand-in's Thing with the bridge's API helper."""
import json

from bridge.iotstudio.client import api


def handle(req):
    iot = api(client_id_secret="thing_client_id", client_secret_secret="thing_client_secret")
    iot.update_properties("demo", "thing-1", json.loads(req.body))
    return {"body": "written"}
