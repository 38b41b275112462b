"""Backpressure at the edge: hold what arrives while the dispatcher is paused.

Pausing must not stop reading outright: the PUBACKs of replies, which finish the requests in
flight, arrive on the same connection as new requests.  While paused, messages that arrive
are held here (QoS >= 1 ones are bounded by the Receive Maximum the bridge announced) and
delivered on resume; reading stops only when the hold is full and no reply awaits its PUBACK.
A QoS 0 message beyond a full hold is dropped, counted and warned about.  Free of MQTT
library code: the transport supplies the three callables.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

from .message import Inbound

log = logging.getLogger("bridge.transport")


class Intake:
    def __init__(
        self,
        deliver: Callable[[Inbound], None],
        set_reading: Callable[[bool], None],
        replies_pending: Callable[[], bool],
        capacity: int,
    ) -> None:
        self._deliver = deliver
        self._set_reading = set_reading
        self._replies_pending = replies_pending
        self._held: deque[Inbound] = deque()
        self._max = max(capacity, 1)
        self._held_qos = 0  # held QoS >= 1 messages: more than Receive Maximum is a broker bug
        self._overrun_warned = False
        self._releasing = False
        self.paused = False
        self.dropped_qos0 = 0

    def offer(self, msg: Inbound) -> None:
        """A message arrived: deliver it now, or hold it while paused (order is kept)."""
        if self.paused or self._held:
            self._hold(msg)
        else:
            self._deliver(msg)

    def _hold(self, msg: Inbound) -> None:
        if msg.qos == 0 and len(self._held) >= self._max:
            # Only reached while reading on for the PUBACKs of replies, past a QoS 0 flood.
            self.dropped_qos0 += 1
            if self.dropped_qos0 % 1000 == 1:
                log.warning("QoS 0 message on %r dropped: the bridge is saturated (%d dropped so far)",
                            msg.topic, self.dropped_qos0)
        else:
            self._held.append(msg)
            if msg.qos:
                self._held_qos += 1
                if self._held_qos > self._max and not self._overrun_warned:
                    self._overrun_warned = True
                    log.warning("the broker sent more unacknowledged messages than the Receive Maximum of %d "
                                "(a broker bug, seen with mosquitto 2.0.11): the excess is held in memory",
                                self._max)
        if self.paused and len(self._held) >= self._max and not self._replies_pending():
            self._set_reading(False)  # the broker (and TCP) hold the rest

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """Deliver the held messages, then what arrives, until paused again."""
        self.paused = False
        if self._releasing:  # called from a delivery below: that loop goes on
            return
        self._releasing = True
        try:
            while self._held and not self.paused:
                msg = self._held.popleft()
                if msg.qos:
                    self._held_qos -= 1
                self._deliver(msg)
        finally:
            self._releasing = False
        if not self.paused or len(self._held) < self._max:
            self._set_reading(True)

    def connection_lost(self) -> None:
        """Held QoS >= 1 messages were never acknowledged: the broker redelivers them when the
        session resumes, and their packet ids mean nothing on the next connection."""
        if self._held:
            self._held = deque(m for m in self._held if not m.qos)
            self._held_qos = 0
