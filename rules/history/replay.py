"""``dustgate replay``: run rules over history before switching them on.

::

    dustgate replay rules.yaml --csv last-week.csv
    dustgate replay rules.yaml --influx http://127.0.0.1:8086 --db dustgate \\
        --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z --compare stricter.yaml

The very same :class:`rules.core.engine.Engine` runs with the clock set to the
readings' timestamps: readings are stored as they come (``ingest_values``
with ``evaluate=False``) and the engine ticks at every whole second of data
time, so rule decisions are taken on a 1 s grid (live, a rule is also
evaluated on each reading; the difference is below a second). Every second
is ticked, gaps in the data too (timers run out, data goes stale, and an
idle rule over its threshold but blocked counts each second), so the
figures do not depend on how often the data was sampled: the same episode
read every 1 s, 10 s or 60 s gives the same minutes within one poll.

Input (CSV long or wide, InfluxDB 1.x) is read by :mod:`rules.history.sources`;
rows must be in time order per device (out-of-order ones are counted and
dropped, as live).

Speed (one week of 1 Hz data for 10 devices is 6 million readings): the
command reads its input in a second process (``replay(..., ahead=True)``,
:mod:`rules.history.readahead`), a wide row is converted only for the metrics some
rule reads, and the engine's quiet and steady tests leave rules that are
waiting alone. ``tests/rules/test_fast_paths.py`` holds the result to the
plain path (csv module, every rule through the full state machine every
second): same statistics to the last bit, same actions.

Per rule (summed over its sites): ``triggers`` (runs started), ``active_min``
(minutes active = spraying for rules that lease actuators), ``water_l``
(litres per minute of the leased actuators x active minutes), ``longest_exceed_min``
(longest stretch with the value known and beyond the ON threshold),
``over_min`` (minutes beyond the threshold), ``blocked_min`` (minutes beyond
the threshold while an interlock held). ``--compare other.yaml`` runs a
second rules file over the same readings and shows both with deltas.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.configfile import ConfigError
from rules.core.config import RulesFile, load_rules_file
from rules.core.engine import Engine, InstanceKey
from rules.core.evaluator import EmitEvent
from rules.history.readahead import ReadAhead, read_ahead
from rules.history.sources import (
    INPUT_ERRORS,
    CsvReadings,
    Reading,
    ReplayError,
    parse_time,
    read_csv,
    read_influx,
)

__all__ = ["ReplayError", "ReplayResult", "RuleStats", "main", "read_csv", "read_influx", "replay"]

# ----------------------------------------------------------------- replay


@dataclass
class RuleStats:
    rule: str
    triggers: int = 0
    active_min: float = 0.0
    water_l: float = 0.0
    longest_exceed_min: float = 0.0
    over_min: float = 0.0
    blocked_min: float = 0.0
    stops: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("active_min", "water_l", "longest_exceed_min", "over_min", "blocked_min"):
            d[k] = round(d[k], 2)
        return d


@dataclass
class ReplayResult:
    rules: dict[str, RuleStats]
    counters: dict[str, int]
    first_ts: float | None
    last_ts: float | None
    readings: int


class _Observer:
    """Accumulates RuleStats from engine ticks (1 s of data time each)."""

    def __init__(self, engine: Engine, rf: RulesFile) -> None:
        self.engine = engine
        self.stats = {r.id: RuleStats(r.id) for r in rf.rules if r.enabled}
        self.run: dict[tuple[str, str], float] = {}  # current exceedance stretch, seconds
        lpm = {(a.site, a.id): a.litres_per_minute for a in rf.actuator_list}
        self.info: dict[InstanceKey, tuple[RuleStats, float, bool, float]] = {}
        for key in engine.instances():
            rule = engine.rule(key)
            site = key[1]
            water = sum(lpm.get((site, act), 0.0) for act in rule.actions.lease)
            self.info[key] = (self.stats[rule.id], water, rule.is_above, rule.threshold)

    def observe(self, actions: list[Any], dt: float) -> None:
        for a in actions:
            if isinstance(a, EmitEvent) and a.event.rule is not None:
                st = self.stats.get(a.event.rule)
                if st is None:
                    continue
                if a.event.kind == "on":
                    st.triggers += 1
                elif a.event.kind == "off" and a.event.data:
                    reason = str(a.event.data.get("reason", "")).split(":")[0]
                    st.stops[reason] = st.stops.get(reason, 0) + 1
        engine = self.engine
        last_values = engine.last_values
        states = engine.states
        runs = self.run
        minutes = dt / 60.0
        for key, (st, water, is_above, thr) in self.info.items():
            state = states[key]
            if state.phase == "active":
                st.active_min += minutes
                st.water_l += water * minutes
            v = last_values.get(key)
            if v is None or not (v > thr if is_above else v < thr):
                if runs and key in runs:
                    del runs[key]
                continue
            st.over_min += minutes
            if state.blocked:
                st.blocked_min += minutes
            run = runs.get(key, 0.0) + dt
            runs[key] = run
            if run / 60.0 > st.longest_exceed_min:
                st.longest_exceed_min = run / 60.0


def replay(
    readings: Iterable[Reading],
    rules_files: list[RulesFile],
    ahead: bool = False,
    counters: Counter[str] | None = None,
) -> list[ReplayResult]:
    """Run one engine per rules file over the same readings; ``ahead``: read them in
    a second process where that is safe (:mod:`rules.history.readahead`).
    ``counters``: the Counter the source counts into (a CSV reader's own otherwise),
    brought back from the second process."""
    engines = [Engine(rf) for rf in rules_files]
    if isinstance(readings, CsvReadings):

        def metrics_for(site: str, device: str) -> set[str]:
            return set().union(*(e.metrics_of(site, device) for e in engines))

        counters = readings.counters
        readings = readings.select(metrics_for)
    if ahead:
        readings = read_ahead(readings, counters)
    try:
        return _run(readings, engines, rules_files)
    finally:
        if isinstance(readings, ReadAhead):
            readings.close()  # stopped by an error: the reader process goes too


def _run(
    readings: Iterable[Reading], engines: list[Engine], rules_files: list[RulesFile]
) -> list[ReplayResult]:
    observers = [_Observer(e, rf) for e, rf in zip(engines, rules_files, strict=True)]
    pairs = list(zip(engines, observers, strict=True))
    next_tick = math.inf  # placed by the first reading
    first: float | None = None
    last: float | None = None
    n = 0
    ts = 0.0
    for ts, site, device, values, status, flags in readings:
        n += 1
        while ts >= next_tick:  # every second of data time, gaps included
            for eng, obs in pairs:
                obs.observe(eng.tick(next_tick), 1.0)
            next_tick += 1.0
        if n == 1:
            first = ts
            next_tick = math.floor(ts) + 1.0
        for eng in engines:
            eng.ingest_values(site, device, ts, n, values, ts, status, flags, False)
    if n:
        last = ts
        for eng, obs in pairs:
            obs.observe(eng.tick(next_tick), 1.0)
    return [
        ReplayResult(obs.stats, dict(eng.counters), first, last, n)
        for eng, obs in pairs
    ]  # fmt: skip


# ----------------------------------------------------------------- output

COLUMNS = ("triggers", "active_min", "water_l", "longest_exceed_min", "over_min", "blocked_min")


def _rows(result: ReplayResult) -> list[dict[str, Any]]:
    return [s.row() for s in result.rules.values()]


def format_table(results: list[ReplayResult], names: list[str]) -> str:
    lines = []
    if len(results) == 1:
        rows = _rows(results[0])
        head = ["rule", *COLUMNS]
        table = [head] + [[r["rule"], *(_num(r[c]) for c in COLUMNS)] for r in rows]
    else:
        a, b = results
        ids = list(dict.fromkeys([*a.rules, *b.rules]))
        head = ["rule", "stat", names[0], names[1], "delta"]
        table = [head]
        for rid in ids:
            ra, rb = a.rules.get(rid), b.rules.get(rid)
            for c in COLUMNS:
                va = getattr(ra, c) if ra else None
                vb = getattr(rb, c) if rb else None
                delta = (vb - va) if va is not None and vb is not None else None
                table.append([rid, c, _num(va), _num(vb), _num(delta, signed=True)])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for j, row in enumerate(table):
        cells = [str(c).ljust(w) if i == 0 or (len(results) > 1 and i == 1) else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, res in zip(names, results, strict=True):
        span = ""
        if res.first_ts is not None and res.last_ts is not None:
            f = datetime.fromtimestamp(res.first_ts, UTC).isoformat(timespec="seconds")
            t = datetime.fromtimestamp(res.last_ts, UTC).isoformat(timespec="seconds")
            span = f" {f} .. {t}"
        dropped = {k: v for k, v in res.counters.items() if k not in ("readings",) and v}
        lines.append(f"{name}: {res.readings} readings{span}; engine counters: {dropped or '-'}")
    return "\n".join(lines) + "\n"


def _num(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:+d}" if signed else str(v)
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def format_csv(results: list[ReplayResult], names: list[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["rules_file", "rule", *COLUMNS])
    for name, res in zip(names, results, strict=True):
        for r in _rows(res):
            w.writerow([name, r["rule"], *(r[c] for c in COLUMNS)])
    return out.getvalue()


def format_json(results: list[ReplayResult], names: list[str]) -> str:
    doc: dict[str, Any] = {
        "runs": [
            {"rules_file": name, "readings": res.readings, "first_ts": res.first_ts,
             "last_ts": res.last_ts, "counters": res.counters, "rules": _rows(res)}
            for name, res in zip(names, results, strict=True)
        ]
    }  # fmt: skip
    if len(results) == 2:
        a, b = results
        doc["delta"] = {
            rid: {c: round(getattr(b.rules[rid], c) - getattr(a.rules[rid], c), 2) for c in COLUMNS}
            for rid in a.rules
            if rid in b.rules
        }
    return json.dumps(doc, indent=2) + "\n"


# -------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dustgate replay",
        description="Run rules over recorded telemetry and report what they would have done.",
    )
    p.add_argument("rules", help="rules.yaml")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="FILE", help="CSV export, long or wide format ('-' = stdin)")
    src.add_argument("--influx", metavar="URL", help="InfluxDB 1.x URL, e.g. http://127.0.0.1:8086")
    p.add_argument("--db", default="dustgate", help="InfluxDB database (default: dustgate)")
    p.add_argument("--user", help="InfluxDB user")
    p.add_argument("--password", help="InfluxDB password")
    p.add_argument("--from", dest="start", metavar="T", help="start, ISO 8601 or ms (inclusive)")
    p.add_argument("--to", dest="end", metavar="T", help="end, ISO 8601 or ms (exclusive)")
    p.add_argument("--compare", metavar="OTHER.yaml", help="a second rules file to compare with")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    return p


def main(argv: list[str]) -> int:
    """``dustgate replay ...``; returns the exit code (0 ok, 1 bad input, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        files = [load_rules_file(args.rules)]
        names = [Path(args.rules).name]
        if args.compare:
            files.append(load_rules_file(args.compare))
            names.append(Path(args.compare).name)
            if names[0] == names[1]:
                names = [args.rules, args.compare]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        start = parse_time(args.start) if args.start else -math.inf
        end = parse_time(args.end) if args.end else math.inf
        counters: Counter[str] = Counter()
        if args.csv:
            if args.csv == "-":
                results = replay(read_csv(sys.stdin, counters, start, end), files, ahead=True)
            else:
                with open(args.csv, newline="", encoding="utf-8") as fh:
                    results = replay(read_csv(fh, counters, start, end), files, ahead=True)
        else:
            if not (args.start and args.end):
                print("--influx needs --from and --to", file=sys.stderr)
                return 2
            src = read_influx(
                args.influx, args.db, start, end, args.user, args.password, counters=counters
            )
            results = replay(src, files, ahead=True, counters=counters)
        for r in results:
            r.counters.update({k: v for k, v in counters.items() if v})
    except INPUT_ERRORS as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    fmt = {"table": format_table, "csv": format_csv, "json": format_json}[args.format]
    text = fmt(results, names)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
