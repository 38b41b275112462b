"""``GET /``: the status page a person reads, server-rendered, refreshing itself every 5 s.

The broker and its two connections, every route with its figures (from :mod:`bridge.stats`),
the last error of each function, requests in flight, the outbox and parked replies.  No
script; one narrow column that reflows on a phone.  Every value is HTML-escaped.
"""

from __future__ import annotations

import os
import time
from html import escape
from typing import TYPE_CHECKING

from aiohttp import web

from ..functions import FunctionInfo, Unavailable
from ..link import reply_client_id
from .health import verdict

if TYPE_CHECKING:
    from ..dispatch import Route
    from ..transport import Connection
    from .server import BridgeView

REFRESH_SECONDS = 5

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:.8rem;color:#222}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.ok{color:#176e2c}.bad{color:#b3261e}.muted{color:#666}
.state{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#eee;font-weight:600}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}code{word-break:break-all}
@media (max-width:40rem){table,thead,tbody,tr,th,td{display:block}thead{display:none}
tr{border:1px solid #ddd;border-radius:.4rem;margin:.5rem 0;padding:.3rem}td{border:0;padding:.15rem .3rem}
td.n{text-align:left}td[data-label]::before{content:attr(data-label) ": ";font-weight:600}}
"""


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ago(when: float, now: float) -> str:
    delta = max(0, int(now - when))
    text = f"{delta} s" if delta < 120 else f"{delta // 60} min" if delta < 7200 else f"{delta // 3600} h"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} ({text} ago)"


def _table(headers: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """Rows of ``(html, css class)`` cells; labels repeat per cell for the phone layout."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td data-label="{escape(h)}" class="{cls}">{cell}</td>'
                         for h, (cell, cls) in zip(headers, row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _style_of(route: "Route") -> tuple[str, str]:
    function = route.function
    if isinstance(function, FunctionInfo):
        return ("OpenFaaS" if function.style == "openfaas" else "IoT Studio"), ("async" if function.is_async else "sync")
    if isinstance(function, Unavailable):
        return "unavailable", "–"
    return "Thing (no code)", "–"


def _route_rows(view: "BridgeView") -> list[list[tuple[str, str]]]:
    now = time.monotonic()
    rows = []
    for route in view.routes:
        figures = route.stats
        count, p50, p99 = figures.window.summary(now) if figures else (0, None, None)
        style, mode = _style_of(route)
        function = escape(route.config.handler or "–")
        if isinstance(route.function, Unavailable):
            function += f'<br><span class="bad">{escape(route.function.reason)}</span>'
        rows.append([
            (f"<code>{escape(route.config.topic)}</code>", ""), (function, ""), (escape(style), ""),
            (mode, ""), (str(figures.requests if figures else 0), "n"),
            (str(figures.errors if figures else 0), "n"), (str(figures.timeouts if figures else 0), "n"),
            (str(count), "n"), (_ms(p50), "n"), (_ms(p99), "n"),
        ])
    return rows


def _errors(view: "BridgeView") -> str:
    errors = view.stats.last_errors
    if not errors:
        return '<p class="muted">No errors since the bridge started.</p>'
    now = time.time()
    rows = [[(escape(name), ""), (escape(e.type), "bad"), (escape(e.message[:500]), ""),
             (f"<code>{escape(e.where)}</code>" if e.where else "–", ""), (escape(_ago(e.when, now)), "")]
            for name, e in sorted(errors.items(), key=lambda item: -item[1].when)]
    return _table(["Function", "Type", "Message", "Where", "When"], rows)


def _broker(view: "BridgeView") -> str:
    mqtt = view.config.mqtt
    rows = []
    link = view.link
    connections: list[tuple[str, str, Connection | None]] = (
        [(c.name, c.client_id, c) for c in link.connections] if link is not None
        else [("requests", mqtt.client_id, None), ("replies", reply_client_id(mqtt), None)])
    for name, client_id, conn in connections:
        up = conn is not None and conn.is_connected
        state = '<span class="ok">connected</span>' if up else '<span class="bad">down</span>'
        reconnects = max(conn.connections - 1, 0) if conn is not None else 0
        rows.append([(name, ""), (state, ""), (f"<code>{escape(client_id)}</code>", ""), (str(reconnects), "n")])
    return (f"<p>Broker <code>{escape(mqtt.host)}:{mqtt.port}</code> (MQTT {'v5' if mqtt.protocol == 5 else '3.1.1'})</p>"
            + _table(["Connection", "State", "Client id", "Reconnects"], rows))


def _work(view: "BridgeView") -> str:
    dispatcher = view.dispatcher
    in_flight = dispatcher.in_flight if dispatcher is not None else 0
    parked = dispatcher.lanes.parked if dispatcher is not None else 0
    items = [f"In flight: <b>{in_flight}</b> of {view.config.limits.max_in_flight}",
             f"Parked replies: <b>{parked}</b>"]
    if view.things is not None:
        figures = view.things.stats()
        dropped = figures.get("dropped_full", 0) + figures.get("dropped_expired", 0)
        items.append(f"Outbox: <b>{max(figures.get('pending', 0), 0)}</b> pending, "
                     f"{figures.get('delivered', 0)} delivered, {dropped} dropped")
    else:
        items.append('Outbox: <span class="muted">no Thing routes</span>')
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _workers(view: "BridgeView") -> str:
    executor = view.executor
    if executor is None:
        return '<p class="muted">Not started yet.</p>'
    rows = [[(escape(str(w["name"])), ""), (str(w["pid"] or "–"), "n"), (escape(str(w["state"])), ""),
             (str(w["calls"]), "n")] for w in executor.describe()]
    where = "worker processes" if executor.mode == "process" else "threads of the daemon"
    return (f"<p>Functions run in {where}; {executor.restarts} replaced since the start.</p>"
            + _table(["Worker", "PID", "State", "Calls"], rows))


def render(view: "BridgeView") -> str:
    """The whole page."""
    state, reason = verdict(view)
    css = "ok" if state == "serving" else "bad"
    uptime = int(time.time() - view.stats.started)
    routes = _table(["Topic", "Function", "Style", "Mode", "Requests", "Errors", "Timeouts",
                     "Last 5 min", "p50", "p99"], _route_rows(view))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>iot-bridge: {escape(state)}</title><style>{_STYLE}</style></head>
<body>
<h1>iot-bridge <span class="state {css}" id="state">{escape(state)}</span></h1>
<p class="muted">{escape(reason) + '. ' if reason else ''}PID {os.getpid()}, up {uptime // 3600} h {uptime % 3600 // 60} min {uptime % 60} s.
Refreshes every {REFRESH_SECONDS} s. <a href="/metrics">Metrics</a> · <a href="/__/health">Health</a></p>
<h2>Broker</h2>{_broker(view)}
<h2>Work</h2>{_work(view)}
<h2>Workers</h2>{_workers(view)}
<h2>Routes</h2>{routes}
<p class="muted">Requests, errors (5xx other than 504) and timeouts (504) since the start, HTTP
invocations included; the last three columns cover the last 5 minutes.</p>
<h2>Last error per function</h2>{_errors(view)}
</body></html>
"""


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=render(request.app["view"]), content_type="text/html",
                        headers={"Cache-Control": "no-store"})
