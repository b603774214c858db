"""Rate-limited log lines: one line per kind per period, with a count of the rest.

Anything a peer can make us log (a platform sending garbage, a gateway publishing
bad telemetry) must not become a log flood: on an SD card that is a fault of its
own. :class:`Throttle` is the pure core (the clock is an argument): it admits the
first occurrence of a kind, holds back the others for ``period`` seconds and
counts them; the next admitted line carries that count. :class:`ThrottledLog` is
the thin shell around a :class:`logging.Logger`. Pure and free of agent
internals, so the rule engine may import it too (like ``gateway.backoff``).

    log = ThrottledLog(logging.getLogger(__name__))
    log.warning("bad-packet", "hj212 %s: bad data from the platform: %s", name, why)
    # -> "hj212 city: bad data from the platform: CRC ... (and 41 more like this
    #     since the last such line)" at most once a minute
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PERIOD = 60.0


@dataclass(slots=True)
class _Kind:
    last: float  # when a line of this kind was last let through
    held: int = 0  # occurrences held back since


class Throttle:
    """Decides which occurrences of each kind become a line (pure; clock injected)."""

    def __init__(self, period: float = DEFAULT_PERIOD, max_kinds: int = 256) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self.max_kinds = max_kinds  # kinds remembered; a peer must not grow this without end
        self._kinds: dict[str, _Kind] = {}
        self.suppressed_total = 0

    def admit(self, kind: str, now: float) -> int | None:
        """None: hold this occurrence back (counted). Otherwise log it now, saying
        that the returned number of occurrences were held back before it."""
        k = self._kinds.get(kind)
        if k is not None and now - k.last < self.period:
            k.held += 1
            self.suppressed_total += 1
            return None
        held = 0 if k is None else k.held
        if k is None and len(self._kinds) >= self.max_kinds:
            self._forget(now)
        self._kinds[kind] = _Kind(now)
        return held

    def held(self, kind: str) -> int:
        """Occurrences of ``kind`` held back since its last line."""
        k = self._kinds.get(kind)
        return 0 if k is None else k.held

    def _forget(self, now: float) -> None:
        """Drop kinds whose period is over (their held count is lost: the last line
        was at least a period ago); if none is, the oldest one."""
        stale = [name for name, k in self._kinds.items() if now - k.last >= self.period]
        for name in stale or [min(self._kinds, key=lambda n: self._kinds[n].last)]:
            del self._kinds[name]


class ThrottledLog:
    """A logger whose lines are throttled per kind (see :class:`Throttle`)."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = DEFAULT_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.throttle = Throttle(period)
        self._clock = clock

    def log(self, level: int, kind: str, msg: str, *args: object, now: float | None = None) -> bool:
        """Log ``msg % args`` unless ``kind`` was logged within the period; True if logged.

        ``now`` is the caller's clock where it has one (a pure core passes its own)."""
        if not self.logger.isEnabledFor(level):
            return False
        held = self.throttle.admit(kind, self._clock() if now is None else now)
        if held is None:
            return False
        if held:
            msg += f" (and {held} more like this since the last such line)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: object, now: float | None = None) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, now=now)

    def info(self, kind: str, msg: str, *args: object, now: float | None = None) -> bool:
        return self.log(logging.INFO, kind, msg, *args, now=now)

    def error(self, kind: str, msg: str, *args: object, now: float | None = None) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, now=now)
