"""A stand-in for the broker link, recording what the dispatcher publishes and acknowledges."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.message import Outbound


@dataclass
class Recorder:
    published: list[Outbound] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    can_publish: bool = True  # the reply connection is up
    can_ack: bool = True  # the request connection is up

    def publish(self, out: Outbound) -> int | None:
        self.published.append(out)
        return None  # handed over: the dispatcher acknowledges at once

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)

    @property
    def sessions(self) -> list["Recorder"]:
        return [self]  # one request session, recorded here too

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def flush(self) -> None: ...
