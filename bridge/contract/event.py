"""What a function receives: the :class:`Event` (``req`` / ``event``) and OpenFaaS's :class:`Context`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import parse_qsl

from werkzeug.datastructures import Headers, ImmutableMultiDict
from werkzeug.exceptions import BadRequestKeyError

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class RequestHeaders(Headers):
    """werkzeug ``Headers`` built on first use (``_list``, which every method works on): most
    functions never read them, and a value werkzeug refuses (a newline) raises in the function."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = items

    def __getitem__(self, key: Any) -> Any:
        # A missing name is a plain KeyError, as with Flask's request.headers (werkzeug's
        # Headers would raise its BadRequestKeyError, a 400 for OpenFaaS functions).
        try:
            return super().__getitem__(key)
        except BadRequestKeyError:
            raise KeyError(key) from None

    def __getattr__(self, name: str) -> Any:
        if name != "_list":
            raise AttributeError(name)
        self._list: list[tuple[str, str]] = []
        self.extend(self.__dict__.pop("_items", ()))
        return self._list


class Event:
    """The request a function receives (IoT Studio calls it ``req``, OpenFaaS ``event``).

    ``method``, ``body`` (bytes), ``headers`` (werkzeug headers, case-insensitive), ``query``
    (werkzeug ``ImmutableMultiDict``), ``path`` (``"/" + topic`` on MQTT) and ``topic``: plain
    attributes, so ``vars(event)`` lists them as it does for OpenFaaS's own Event.
    """

    def __init__(self, body: bytes = b"", *, method: str = "POST", path: str = "/",
                 headers: Iterable[tuple[str, str]] = (), query: str = "", topic: str = "") -> None:
        self.body = body
        self.headers: Headers = RequestHeaders(headers)
        self.method = method
        self.query: ImmutableMultiDict[str, str] = (
            ImmutableMultiDict(parse_qsl(query, keep_blank_values=True)) if query else ImmutableMultiDict()
        )
        self.path = path
        self.topic = topic

    def __repr__(self) -> str:  # never shows the body: payloads stay out of logs
        return f"<Event {self.method} {self.path} {len(self.body)} bytes>"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # An event crosses to a worker process as its parts, not as werkzeug's objects (which
        # cost ~9 us to pickle and as much to unpickle, per request).
        items = self.headers.__dict__.get("_items")
        headers = list(self.headers.items()) if items is None else list(items)
        query = list(self.query.items(multi=True)) if self.query else None
        return _rebuild, (self.body, self.method, self.path, self.topic, headers, query)


def _rebuild(body: bytes, method: str, path: str, topic: str, headers: list[tuple[str, str]],
             query: list[tuple[str, str]] | None) -> Event:
    event = Event(body, method=method, path=path, headers=headers, topic=topic)
    if query:
        event.query = ImmutableMultiDict(query)
    return event


@dataclass
class Context:
    """OpenFaaS's second argument: basic facts about where the function runs.

    A plain object (``vars(context)`` works); each call gets its own copy (:meth:`for_call`),
    as OpenFaaS makes one per request, so what a function sets on it stays with that call.
    """

    hostname: str = "localhost"

    def for_call(self) -> "Context":
        return Context(self.hostname)
