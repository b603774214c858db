"""Exponential backoff with jitter, pure: the caller supplies the random draw."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2  # +-20 % so that many clients do not retry in step

    def delay(self, failures: int, draw: float = 0.5) -> float:
        """Delay after ``failures`` consecutive failures (>= 1); ``draw`` in [0, 1)."""
        if failures <= 0:
            return 0.0
        raw = min(self.maximum, self.base * self.factor ** min(failures - 1, 60))
        return max(0.0, raw * (1.0 + self.jitter * (2.0 * draw - 1.0)))
