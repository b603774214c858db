"""Helpers shared by the sink tests (polling with a deadline, counting points)."""

from __future__ import annotations

import time

from gateway.localservices import Influxd


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll a condition with a deadline (integration tests only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def count_points(
    ix: Influxd, db: str, measurement: str = "telemetry", field_name: str = "seq"
) -> int:
    res = ix.query(f'SELECT count("{field_name}") FROM "{measurement}"', db=db)
    series = res["results"][0].get("series")  # type: ignore[index]
    if not series:
        return 0
    return int(series[0]["values"][0][1])
