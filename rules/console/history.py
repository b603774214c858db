"""What the console reads from InfluxDB (1.x API, InfluxQL), and the preview replay.

- :func:`series`: a site's PM10 / PM2.5 means per time bucket for the chart
  (valid values only);
- :func:`spray_periods`: when the site's actuators were on (the ``actuator``
  measurement), for the chart's shading;
- :func:`events`: the site's stored rule events;
- :func:`preview`: one rule's change replayed over the site's stored readings
  with the engine's own replay (:func:`rules.history.replay.replay`), before
  and after.

All are blocking (urllib) and meant for ``asyncio.to_thread``. A database
that is away raises :class:`HistoryError` with a message for the page.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from rules.console.config import ConsoleInflux
from rules.core.config import RulesFile
from rules.core.model import Rule
from rules.history.replay import ReplayResult, replay
from rules.history.sources import ReplayError, read_influx
from rules.sink.points import valid_metric


class HistoryError(Exception):
    """InfluxDB is away or answered with an error."""


Point = tuple[float, float]


def _query(
    cfg: ConsoleInflux, q: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    args = {"db": cfg.database, "q": q, "epoch": "ms"}
    if params:
        args["params"] = json.dumps(params)
    if cfg.username:
        args["u"] = cfg.username
    if cfg.password is not None:
        args["p"] = cfg.password.get_secret_value()
    url = cfg.url.rstrip("/") + "/query?" + urllib.parse.urlencode(args)
    try:
        with urllib.request.urlopen(url, timeout=cfg.timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise HistoryError(f"InfluxDB answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HistoryError(f"InfluxDB at {cfg.url} is not reachable ({exc})") from None
    out: list[dict[str, Any]] = []
    for result in doc.get("results", []):
        if "error" in result:
            raise HistoryError(f"InfluxDB: {result['error']}")
        out.extend(result.get("series", []))
    return out


def bucket_for(span_s: float) -> int:
    """A GROUP BY time() that gives a few hundred points over ``span_s``."""
    for b in (10, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span_s / b <= 400:
            return b
    return 3600


def series(
    cfg: ConsoleInflux, site: str, metrics: list[str], start: float, end: float
) -> dict[str, list[Point]]:
    """Each metric's mean per bucket over its valid values only (status ok, the metric
    not flagged: :func:`rules.sink.points.valid_metric`), so a frozen or over-range
    sensor leaves a gap instead of a line of clean air."""
    b = bucket_for(end - start)
    out: dict[str, list[Point]] = {m: [] for m in metrics}
    for m in metrics:
        q = (
            f'SELECT mean("{m}") AS "{m}" FROM "telemetry" WHERE "site" = $site AND '
            f"{valid_metric(m)} AND "
            f"time >= {int(start * 1000)}ms AND time < {int(end * 1000)}ms "
            f"GROUP BY time({b}s) fill(none)"
        )
        for s in _query(cfg, q, {"site": site}):
            for row in s.get("values", []):
                if isinstance(row[1], int | float):
                    out[m].append((row[0] / 1000.0, float(row[1])))
    return out


def spray_periods(
    cfg: ConsoleInflux, site: str, start: float, end: float
) -> list[tuple[float, float, str]]:
    """(start, end, actuator) of every ON stretch overlapping [start, end)."""
    q = (
        'SELECT "on" FROM "actuator" WHERE "site" = $site AND '
        f'time >= {int(start * 1000)}ms AND time < {int(end * 1000)}ms GROUP BY "actuator"'
    )
    before = (
        'SELECT last("on") FROM "actuator" WHERE "site" = $site AND '
        f'time < {int(start * 1000)}ms GROUP BY "actuator"'
    )
    initial: dict[str, bool] = {}
    for s in _query(cfg, before, {"site": site}):
        act = (s.get("tags") or {}).get("actuator", "?")
        vals = s.get("values") or []
        initial[act] = bool(vals and vals[-1][1])
    periods: list[tuple[float, float, str]] = []
    seen: set[str] = set()
    for s in _query(cfg, q, {"site": site}):
        act = (s.get("tags") or {}).get("actuator", "?")
        seen.add(act)
        on_since: float | None = start if initial.get(act) else None
        for ts_ms, on in s.get("values", []):
            ts = ts_ms / 1000.0
            if on and on_since is None:
                on_since = ts
            elif not on and on_since is not None:
                periods.append((on_since, ts, act))
                on_since = None
        if on_since is not None:
            periods.append((on_since, end, act))
    for act, on in initial.items():
        if on and act not in seen:
            periods.append((start, end, act))
    return periods


@dataclass(frozen=True, slots=True)
class StoredEvent:
    ts: float
    kind: str
    severity: str
    rule: str
    actuator: str
    text: str


def events(cfg: ConsoleInflux, site: str, start: float, limit: int = 100) -> list[StoredEvent]:
    q = (
        'SELECT "text", "kind", "severity", "rule", "actuator" FROM "rule_event" '
        f'WHERE "site" = $site AND time >= {int(start * 1000)}ms ORDER BY time DESC LIMIT {limit}'
    )
    out = []
    for s in _query(cfg, q, {"site": site}):
        cols = s["columns"]
        for row in s.get("values", []):
            d = dict(zip(cols, row, strict=False))
            out.append(
                StoredEvent(
                    d["time"] / 1000.0,
                    str(d.get("kind") or ""),
                    str(d.get("severity") or ""),
                    str(d.get("rule") or ""),
                    str(d.get("actuator") or ""),
                    str(d.get("text") or ""),
                )
            )
    return out


def rule_devices(rule: Rule, site: str) -> set[tuple[str, str]]:
    """The (site, device) pairs a rule reads at ``site``: its devices, its interlocks'
    and its background's (which may be another site's)."""
    out = {(site, d) for d in rule.devices}
    for il in rule.unless:
        out |= {(il.site or site, d) for d in il.devices}
    if rule.relative_to is not None:
        out |= {(rule.relative_to.site or site, d) for d in rule.relative_to.devices}
    return out


@dataclass(frozen=True, slots=True)
class Preview:
    before: ReplayResult
    after: ReplayResult
    readings: int


def preview(
    cfg: ConsoleInflux,
    site: str,
    before: RulesFile,
    after: RulesFile,
    rule_id: str,
    start: float,
    end: float,
) -> Preview:
    """Replay the rule before and after the change over the stored readings it reads at
    ``site`` (:func:`rule_devices`; other devices are not fetched: a week of one
    device at 1 Hz takes ~8 s here)."""

    def only(rf: RulesFile) -> RulesFile:
        rules = [r for r in rf.rules if r.id == rule_id]
        return rf.model_copy(update={"rules": rules, "sites": None})

    user = cfg.username
    pw = cfg.password.get_secret_value() if cfg.password is not None else None
    try:
        rule = next((r for r in after.rules if r.id == rule_id), None)
        devices = rule_devices(rule, site) if rule is not None else set()
        readings = read_influx(cfg.url, cfg.database, start, end, user, pw, devices=devices)
        b, a = replay(readings, [only(before), only(after)])
    except ReplayError as exc:
        raise HistoryError(str(exc)) from None
    return Preview(b, a, b.readings)
