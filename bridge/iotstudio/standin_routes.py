"""The HTTP routes of the IoT Studio stand-in (see :mod:`bridge.iotstudio.standin`)."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from bridge.iotstudio.standin_state import FaultRule, Grant, ThingState, scope_covers

if TYPE_CHECKING:
    from bridge.iotstudio.standin import StandIn

# The category form of each Thing route answers only for a Thing in that category.
_THING_PREFIXES = (
    "/spaces/<space>/things/<uid>",
    "/spaces/<space>/categories/<category>/things/<uid>",
)

API_MAP = Map(
    [
        Rule("/oauth2/token", endpoint="token", methods=["POST"]),
        Rule("/oauth2/revoke", endpoint="revoke", methods=["POST"]),
        *(
            rule
            for prefix in _THING_PREFIXES
            for rule in (
                Rule(f"{prefix}/properties", endpoint="properties", methods=["GET", "PUT"]),
                Rule(f"{prefix}/properties/<prop>", endpoint="properties", methods=["GET", "PUT"]),
                Rule(f"{prefix}/actions/<name>", endpoint="actions", methods=["POST"]),
                Rule(f"{prefix}/events/<name>", endpoint="events", methods=["POST"]),
            )
        ),
    ],
    # A stray or doubled slash is a client bug to surface as 404, not to smooth over.
    merge_slashes=False,
)

CONTROL_MAP = Map(
    [
        Rule("/__faults", endpoint="faults", methods=["POST"]),
        Rule("/__requests", endpoint="requests", methods=["GET", "DELETE"]),
        Rule("/__things/<space>/<uid>", endpoint="thing_state", methods=["GET"]),
    ],
    merge_slashes=False,
)


def error(status: int, message: str, details: dict[str, Any] | None = None) -> Response:
    """A response carrying the platform's error object."""
    body = {"error": {"status": status, "message": message, "details": details or {}}}
    return json_response(status, body)


def json_response(status: int, data: Any) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def json_body(request: Request) -> Any:
    """The request's JSON body, or None when it has none or it is not JSON."""
    try:
        return json.loads(request.get_data(cache=True))
    except ValueError:
        return None


def fault_response(rule: FaultRule) -> Response:
    """The answer to a request an injected failure or rate limit applies to."""
    if rule.kind == "rate_limit":
        response = error(429, "Too many requests", {"retry_after": rule.retry_after})
        response.headers["Retry-After"] = f"{rule.retry_after:g}"
        return response
    return error(rule.status, rule.message, {"injected": True})


def _route(url_map: Map, request: Request) -> tuple[str, dict[str, Any]] | Response:
    try:
        return url_map.bind_to_environ(request.environ).match()
    except MethodNotAllowed as exc:
        response = error(405, "Method not allowed", {"allowed": sorted(exc.valid_methods or [])})
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or []))
        return response
    except NotFound:
        return error(404, "Not found", {"path": request.path})
    except HTTPException as exc:  # werkzeug's other routing outcomes, for completeness
        return error(exc.code or 400, exc.name)


def dispatch(api: StandIn, request: Request) -> Response:
    """Answer an API or OAuth request."""
    routed = _route(API_MAP, request)
    if isinstance(routed, Response):
        return routed
    endpoint, args = routed
    if endpoint == "token":
        return _token(api, request)
    if endpoint == "revoke":
        return _revoke(api, request)
    write = request.method not in ("GET", "HEAD")
    denied = _authenticate(api, request, "thing.update" if write else "thing.read")
    if denied is not None:
        return denied
    if endpoint == "properties":
        return _properties(api, request, **args)
    return _interaction(api, request, endpoint, **args)


def control(api: StandIn, request: Request) -> Response:
    """The ``/__`` routes that drive a stand-in running in another process."""
    routed = _route(CONTROL_MAP, request)
    if isinstance(routed, Response):
        return routed
    endpoint, args = routed
    if endpoint == "faults":
        body = json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            return error(400, "malformed body", {"expected": '{"op": "<name>", ...arguments}'})
        op = body.pop("op")
        try:
            api.faults.apply(op, body)
        except (TypeError, ValueError) as exc:
            return error(400, "bad fault", {"error_description": str(exc)})
        return json_response(200, {"ok": True})
    if endpoint == "requests":
        if request.method == "DELETE":
            api.clear_requests()
            return Response(status=204)
        return json_response(200, {"requests": [vars(r) for r in api.requests]})
    try:  # thing_state
        return json_response(200, vars(api.thing(args["space"], args["uid"])))
    except KeyError:
        return error(404, "Item not found")


def _oauth_error(status: int, code: str, description: str) -> Response:
    return error(status, code, {"error_description": description})


def _client_error(api: StandIn, client_id: str, secret: str | None) -> Response | None:
    """401 unless ``client_id`` is known and ``secret`` (when given) is its secret."""
    known = api.clients.get(client_id)
    if known is None or (
        secret is not None and not secrets.compare_digest(secret.encode(), known[0].encode())
    ):
        return _oauth_error(401, "invalid_client", "unknown client or wrong client secret")
    return None


def _token(api: StandIn, request: Request) -> Response:
    form = request.form
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error(400, "invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        return _oauth_error(
            400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported"
        )
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    with api.lock:
        refused = _client_error(api, client_id, secret)
        if refused is not None:
            return refused
        allowed = api.clients[client_id][1]
        requested = form.get("scope", "").split()
        denied = [s for s in requested if not scope_covers(allowed, s)]
        if denied:
            return _oauth_error(400, "invalid_scope", f"scope not allowed: {' '.join(denied)}")
        scopes = requested or sorted(allowed)
        token = api.issue_token(client_id, scopes)
        body = {
            "access_token": token,
            "expires_in": api.expires_in,
            "id_token": "",
            "refresh_token": "",
            "scope": " ".join(scopes),
            "token_type": "bearer",
            **api.token_extra,
        }
    response = json_response(200, body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _revoke(api: StandIn, request: Request) -> Response:
    form = request.form
    token = form.get("token")
    if not token:
        return _oauth_error(400, "invalid_request", "token is required")
    client_id = form.get("client_id", "")
    with api.lock:
        refused = _client_error(api, client_id, form.get("client_secret"))
        if refused is not None:
            return refused
        grant = api.grants.get(token)
        if grant is not None and grant.client_id != client_id:
            return _oauth_error(400, "unauthorized_client", "the token belongs to another client")
        # RFC 7009: an unknown or already revoked token is not an error.
        if grant is not None:
            grant.revoked = True
    return Response(status=200)


def _authenticate(api: StandIn, request: Request, needed: str) -> Response | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return error(401, "Unauthenticated", {"error_description": "a bearer token is required"})
    status = api.token_status(token)
    if status != "active":
        return error(401, "Unauthenticated", {"error_description": f"the token is {status}"})
    with api.lock:
        grant: Grant = api.grants[token]
        if not scope_covers(grant.scopes, needed):
            return error(403, "Unauthorized", {"required_scope": needed})
    return None


def _find(api: StandIn, space: str, uid: str, category: str | None) -> ThingState | None:
    thing = api.things.get((space, uid))
    if thing is None or (category is not None and thing.category != category):
        return None
    return thing


def _properties(
    api: StandIn,
    request: Request,
    space: str,
    uid: str,
    category: str | None = None,
    prop: str | None = None,
) -> Response:
    body: Any = None
    keep_history = False
    if request.method == "PUT":
        body = json_body(request)
        if not isinstance(body, dict) or (prop is not None and set(body) != {prop}):
            return error(400, "malformed body", {"expected": "a JSON object of property values"})
        flag = request.args.get("update_history", "true").lower()
        if flag not in ("true", "false", "1", "0"):
            return error(400, "malformed query", {"update_history": "must be true or false"})
        keep_history = flag in ("true", "1")
    with api.lock:
        thing = _find(api, space, uid, category)
        if thing is None:
            return error(404, "Item not found")
        if request.method == "PUT":
            thing.properties.update(body)
            if keep_history:
                thing.history.append({"timestamp": now_iso(), "properties": dict(body)})
            return json_response(200, body if prop is not None else dict(thing.properties))
        if prop is None:
            return json_response(200, dict(thing.properties))
        if prop not in thing.properties:
            return error(404, "Item not found")
        return json_response(200, {prop: thing.properties[prop]})


def _interaction(
    api: StandIn,
    request: Request,
    kind: str,
    space: str,
    uid: str,
    name: str,
    category: str | None = None,
) -> Response:
    """Record an action (body ``{"<name>": {"input": ...}}``) or an event (body
    ``{"<name>": {"data": ...}}``)."""
    body = json_body(request)
    entry = body.get(name) if isinstance(body, dict) and len(body) == 1 else None
    field = "input" if kind == "actions" else "data"
    if not isinstance(entry, dict):
        return error(400, "malformed body", {"expected": f'{{"{name}": {{"{field}": ...}}}}'})
    with api.lock:
        thing = _find(api, space, uid, category)
        if thing is None:
            return error(404, "Item not found")
        href = f"/spaces/{space}/things/{uid}/{kind}/{name}/{uuid.uuid4().hex}"
        if kind == "actions":
            record = {
                "input": entry.get("input"),
                "status": "pending",
                "timeRequested": now_iso(),
                "href": href,
            }
            thing.actions.append({name: record})
        else:
            timestamp = entry.get("timestamp") or now_iso()
            record = {"data": entry.get("data"), "timestamp": timestamp, "href": href}
            thing.events.append({name: record})
    return json_response(201, {name: record})


def now_iso() -> str:
    """The current UTC time as ISO 8601 with a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
