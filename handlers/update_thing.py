"""Update a Thing's Property: the IoT Studio example, using swx for the token.

The client id and secret come from the secrets store (`[secrets] dir`, or systemd's
LoadCredential=), never from the code. The body may carry the properties to write as a JSON
object; without one it writes {"temperature": 27} as the original example does.
"""

import json

import requests

import function.secrets as secrets
from swx import api_url
from swx.auth.token import get_token

API_URL = ""  # empty: the bridge's [iot_studio] api_url, else $SWX_API_URL
SPACE = "demo"  # Change it to your Space name
CATEGORY = "sensors"
THING_ID = "thing-1"


def handle(req):
    # Get the client id and secret from the Secrets Storage.
    # This avoids hardcoding the secret in the code.
    client_id = secrets.get("thing_client_id")
    client_secret = secrets.get("thing_client_secret")
    properties = json.loads(req.body) if req.body else {"temperature": 27}

    # Request token with the Thing's credentials and 'thing.update' scope.
    # Token will be automatically revoked at the end of the context manager block.
    with get_token(client_id, client_secret, ["thing.update"]) as token:
        url = f"{API_URL or api_url()}/spaces/{SPACE}/categories/{CATEGORY}/things/{THING_ID}/properties"
        res = requests.put(url, headers={"Authorization": f"Bearer {token.access_token}"},
                           json=properties, timeout=10)
        res.raise_for_status()
    return {
        "status_code": 200,
        "body": "Property updated!",
    }
