"""Frames between the daemon and a worker process, over a Unix socket pair.

A frame is a 4-byte big-endian length and a pickle of a tuple whose first item is its kind.
The daemon trusts nothing a worker sends (a worker runs other people's code): frames from
workers are unpickled with :class:`SafeUnpickler`, which builds only plain values (tuples,
lists, dicts, str, bytes, numbers, None) and refuses every class, so a frame can carry data
but never make the daemon run code.

Daemon -> worker: ``("call", id, spec, event)``, ``("stop",)``.
Worker -> daemon: ``("loading", spec)``, ``("ready", [info, ...])``, ``("result", id, response)``,
``("blocked", seconds)``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ..contract import Failure, Response

HEADER = 4
MAX_FRAME = 256 * 1024 * 1024  # a reply bigger than this is refused by the reader
PROTOCOL = pickle.HIGHEST_PROTOCOL


class WireError(Exception):
    """A frame that cannot be read (the peer is broken or hostile)."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain values only: any class or global in the stream is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused {module}.{name}: workers send plain values only")


def frame(*items: Any) -> bytes:
    body = pickle.dumps(items, PROTOCOL)
    return len(body).to_bytes(HEADER, "big") + body


def split(buffer: bytearray, *, safe: bool) -> list[tuple[Any, ...]]:
    """Remove every complete frame from ``buffer`` and return them, decoded."""
    out: list[tuple[Any, ...]] = []
    pos, size = 0, len(buffer)
    while size - pos >= HEADER:
        length = int.from_bytes(buffer[pos:pos + HEADER], "big")
        if length > MAX_FRAME:
            raise WireError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        end = pos + HEADER + length
        if end > size:
            break
        data = bytes(buffer[pos + HEADER:end])
        try:
            item = SafeUnpickler(io.BytesIO(data)).load() if safe else pickle.loads(data)
        except Exception as exc:
            raise WireError(f"unreadable frame: {exc}") from exc
        if not isinstance(item, tuple) or not item or not isinstance(item[0], str):
            raise WireError("a frame must be a tuple starting with its kind")
        out.append(item)
        pos = end
    del buffer[:pos]
    return out


def _plain(text: str) -> str:
    """``text`` as an exact str: a subclass (a function's own str type in a header name, an
    exception message) would be refused by the daemon's :class:`SafeUnpickler`, which would
    take the frame for a broken worker's.  Status and body are exact already (result rules)."""
    return text if type(text) is str else str.__str__(text)


def pack_response(response: Response) -> tuple[Any, ...]:
    """A response as plain values (see :func:`unpack_response`)."""
    failure = tuple(_plain(x) for x in response.failure) if response.failure is not None else None
    return (response.status, [(_plain(k), _plain(v)) for k, v in response.headers], response.body,
            _plain(response.content_type), response.json, failure)


def unpack_response(state: Any) -> Response:
    """Rebuild a response a worker sent, checking every field's type (raise :class:`WireError`)."""
    try:
        status, headers, body, content_type, is_json, failure = state
        ok = (type(status) is int and isinstance(body, bytes) and isinstance(content_type, str)
              and isinstance(is_json, bool) and isinstance(headers, list)
              and all(isinstance(h, tuple) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers))
        if failure is not None:
            ok = ok and isinstance(failure, tuple) and len(failure) == 3 and all(isinstance(x, str) for x in failure)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WireError("malformed response")
    return Response(status, headers, body, content_type, json=is_json,
                    failure=Failure(*failure) if failure is not None else None)
