"""Calibration of a device's readings against a reference monitor, pure.

A calibrated metric is published as ``value = raw * scale + offset``, where ``raw`` is what
the device reported (after its profile decoded the registers, or the UART driver the frame).
The factors come from co-location with a reference monitor: pairs (device value, reference
value), e.g. hourly means of both side by side. Two pairs give the line through both; three
or more the least-squares line (the reference as a function of the device). Telemetry carries
the factors in force (``cal``) beside each calibrated value, so the raw value stays
recoverable: ``raw = (value - offset) / scale`` (:meth:`Factors.invert`).

Everything here is pure; ``gateway.config`` validates factors and pairs in site.yaml,
``gateway.commission.calibrate`` writes them and keeps the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIN_SPREAD = 1e-9  # relative spread of the device values below which a line is not defined


class CalibrationError(ValueError):
    """Pairs or factors that cannot make a calibration (said in words a technician reads)."""


@dataclass(frozen=True, slots=True)
class Factors:
    """``value = raw * scale + offset``; ``scale`` finite and above 0."""

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        check_factors(self.scale, self.offset)

    def apply(self, raw: float) -> float:
        return raw * self.scale + self.offset

    def invert(self, value: float) -> float:
        """The raw value a calibrated ``value`` came from."""
        return (value - self.offset) / self.scale

    def then(self, after: Factors) -> Factors:
        """These factors followed by ``after``: one line doing both."""
        return Factors(self.scale * after.scale, self.offset * after.scale + after.offset)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


def check_factors(scale: float, offset: float) -> None:
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise CalibrationError(f"scale and offset must be finite numbers (got {scale}, {offset})")
    if scale == 0:
        raise CalibrationError("scale must be above 0 (got 0): it would flatten every reading")
    if scale < 0:
        raise CalibrationError(
            f"scale must be above 0 (got {scale}): a reading that rises while the "
            "reference falls is a wiring or pairing mistake, not a calibration"
        )


@dataclass(frozen=True, slots=True)
class Fit:
    """A line fitted to co-location pairs, with how well it fits."""

    factors: Factors
    method: str  # "two-point" or "linear"
    r2: float  # coefficient of determination (1.0 for two points)
    max_residual: float  # largest |reference - fitted| over the pairs


def fit(pairs: Sequence[tuple[float, float]]) -> Fit:
    """The line through two (device, reference) pairs, or the least-squares line of more."""
    if len(pairs) < 2:
        raise CalibrationError("a calibration needs at least two (device, reference) pairs")
    for x, y in pairs:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise CalibrationError(f"pair ({x}, {y}) is not two finite numbers")
    xs = [float(x) for x, _ in pairs]
    ys = [float(y) for _, y in pairs]
    n = len(pairs)
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    scale_of_x = max(abs(x) for x in xs) or 1.0
    if math.sqrt(sxx / n) <= MIN_SPREAD * scale_of_x:
        raise CalibrationError(
            "the device values of the pairs are all the same: pick moments with "
            "different dust levels (low and high), or give scale/offset"
        )
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if n == 2:
        (x1, x2), (y1, y2) = xs, ys
        scale = (y2 - y1) / (x2 - x1)
        offset = y1 - scale * x1
        method = "two-point"
    else:
        scale = sxy / sxx
        offset = my - scale * mx
        method = "linear"
    factors = Factors(scale, offset)  # raises on a falling or non-finite line
    residuals = [y - factors.apply(x) for x, y in zip(xs, ys, strict=True)]
    syy = math.fsum((y - my) ** 2 for y in ys)
    ss_res = math.fsum(r * r for r in residuals)
    r2 = 1.0 if n == 2 or syy == 0 else max(0.0, 1.0 - ss_res / syy)
    return Fit(factors, method, r2, max(abs(r) for r in residuals))


def calibrate(values: Mapping[str, float], factors: Mapping[str, Factors]) -> dict[str, float]:
    """``values`` with each calibrated metric's factors applied (others unchanged)."""
    out = dict(values)
    for metric, f in factors.items():
        v = out.get(metric)
        if v is not None:
            out[metric] = v * f.scale + f.offset
    return out
