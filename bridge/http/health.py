"""``GET /__/health``: 200 ``OK`` while the bridge serves, else 503 with a short JSON reason.

Serving means what systemd's ``READY=1`` means (bridge.daemon): the functions are loaded, both
broker connections are up and every subscription is acknowledged; and not shutting down.
The answer comes from the event loop that also sends the watchdog pings, so a blocked loop
silences both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .server import BridgeView


def verdict(view: "BridgeView") -> tuple[str, str]:
    """``(state, reason)``: state is ``serving``, ``starting``, ``broker away`` or ``shutting down``."""
    if view.phase == "stopping":
        return "shutting down", "finishing in-flight requests before exiting"
    link = view.link
    if link is None:
        return "starting", "loading functions"
    down = [c.name for c in link.connections if not c.is_connected]
    state = "starting" if view.phase == "starting" else "broker away"
    mqtt = view.config.mqtt
    if down:
        return state, f"{' and '.join(down)} connection{'s' if len(down) > 1 else ''} to {mqtt.host}:{mqtt.port} down"
    if not all(c.connected.is_set() for c in link.connections):
        return state, "subscribing"
    return "serving", ""


async def health(request: web.Request) -> web.Response:
    view: BridgeView = request.app["view"]
    state, reason = verdict(view)
    if state == "serving":
        return web.Response(text="OK")
    return web.json_response({"status": state, "reason": reason}, status=503, headers={"Retry-After": "5"})
