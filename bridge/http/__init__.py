"""The bridge's HTTP side: health, Prometheus metrics, invocation over HTTP, the status page.

It runs on the bridge's own asyncio event loop (aiohttp), so while nobody calls it, it costs
the MQTT path nothing; and it answers only while that loop turns, exactly as the systemd
watchdog pings only while it turns.  Functions run through :meth:`Dispatcher.call`, the same
path as MQTT requests.  See docs/operations.md.
"""

from .server import BridgeView, HttpServer

__all__ = ["BridgeView", "HttpServer"]
