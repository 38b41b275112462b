"""MQTT publisher: the IoT Studio example publishing the request body to ``functions/python``.

The broker address is the bridge's own (from its config), or ``MQTT_BROKER`` (host[:port])
when the function runs elsewhere: never hard-coded.
"""

import paho.mqtt.client as mqtt

from bridge.runtime import broker_address

TOPIC = "functions/python"


def handle(req):
    body = req.body.decode("utf-8")
    host, port = broker_address()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port, 60)
    client.loop_start()
    try:
        msg_info = client.publish(TOPIC, body, qos=1)
        msg_info.wait_for_publish(timeout=5)
        if not msg_info.is_published():
            return {"status_code": 504, "body": "Broker did not acknowledge the message"}
    finally:
        client.disconnect()
        client.loop_stop()

    return {
        "status_code": 200,
        "body": "Message published!",
    }
