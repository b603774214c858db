"""``dustgate calibrate``: set a device's calibration from co-location with a reference monitor,
write it beside site.yaml, and keep a log of every change.

A technician stands a device next to a reference monitor (the bureau's station, a certified
portable), notes pairs of readings (hourly means: what dustgate showed, what the reference
showed) and runs::

    dustgate calibrate --config site.yaml gate-monitor pm10 \\
        --pair 52:48 --pair 180:161 --reference "bureau station BJ-07" --by "Li Wei"

The pairs are the values dustgate *published* (what Grafana shows), so a device that is
already calibrated is corrected from where it stands (``--from raw`` when the values are the
device's own, e.g. ``pm10_raw`` in InfluxDB). Two pairs give the line through both; more
(``--pair`` repeated, or ``--csv FILE`` with columns device,reference) the least-squares line.
``--scale``/``--offset`` set factors directly; ``--reset`` removes the calibration.

The command shows the old and new factors and how well the line fits, asks (or takes
``--yes``), then writes ``calibration.yaml`` (the site's ``calibration_file``) atomically and
appends one JSON line to ``calibration-log.jsonl`` beside it: when, who, device, metric,
reference, method, the pairs, old and new factors, fit quality, note. ``--log`` prints the
log. The agent reads the factors when it starts (restart it to apply).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.calibration import CalibrationError, Factors, Fit, fit
from gateway.config import SiteConfig, device_metrics, load_site_config
from gateway.configfile import ConfigError
from gateway.yamlsafe import read_yaml

LOG_NAME = "calibration-log.jsonl"
HEADER = """\
# Calibration factors of this site's devices: value = raw * scale + offset.
# Written by `dustgate calibrate` (each change is logged in calibration-log.jsonl
# beside this file); checked with site.yaml by `dustgate check site.yaml`.
"""


@dataclass(frozen=True)
class Change:
    """One calibration change, before it is written."""

    device: str
    metric: str
    old: Factors | None
    new: Factors | None  # None: calibration removed
    method: str  # two-point, linear, factors, reset
    pairs: list[tuple[float, float]]
    source: str  # "published" or "raw": what the pairs' device values are
    fitted: Fit | None = None


def plan_change(
    device: str,
    metric: str,
    old: Factors | None,
    *,
    pairs: Sequence[tuple[float, float]] = (),
    source: str = "published",
    scale: float | None = None,
    offset: float | None = None,
    reset: bool = False,
) -> Change:
    """The change asked for (pure). Pairs of published values are mapped back to raw through
    the factors in force, so the new factors always take the raw value to the reference."""
    if reset:
        return Change(device, metric, old, None, "reset", [], source)
    if pairs:
        current = old or Factors()
        raw_pairs = [(current.invert(x) if source == "published" else x, y) for x, y in pairs]
        fitted = fit(raw_pairs)
        return Change(
            device, metric, old, fitted.factors, fitted.method, list(pairs), source, fitted
        )
    if scale is None and offset is None:
        raise CalibrationError("give --pair (two or more), --csv, --scale/--offset or --reset")
    new = Factors(1.0 if scale is None else scale, offset or 0.0)
    return Change(device, metric, old, new, "factors", [], source)


def render_change(change: Change, reference: str) -> str:
    def fmt(f: Factors | None) -> str:
        return "none" if f is None else f"scale {f.scale:.6g}, offset {f.offset:.6g}"

    lines = [
        f"{change.device}.{change.metric} against {reference}: {change.method}",
        f"  old: {fmt(change.old)}",
        f"  new: {fmt(change.new)}",
    ]
    if change.fitted is not None and change.new is not None:
        lines.append(
            f"  fit: r2 {change.fitted.r2:.4f}, largest residual {change.fitted.max_residual:.3g}"
        )
        current = change.old or Factors()
        lines.append(f"  {'device':>10} {'reference':>10} {'new value':>10}")
        for x, y in change.pairs:
            raw = current.invert(x) if change.source == "published" else x
            lines.append(f"  {x:>10.4g} {y:>10.4g} {change.new.apply(raw):>10.4g}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the files


def read_file_entries(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The calibration file's ``devices`` mapping as plain data ({} if absent)."""
    if not path.is_file():
        return {}
    data = read_yaml(path).data or {}  # ConfigError: reported with its line
    devices = data.get("devices") if isinstance(data, dict) else None
    return {str(k): dict(v or {}) for k, v in (devices or {}).items()}


def _num(x: float) -> str:
    text = repr(float(x))
    if "e" in text and "." not in text.split("e")[0]:
        text = text.replace("e", ".0e")  # YAML 1.1 floats need a dot
    return text


def render_file(entries: dict[str, dict[str, dict[str, Any]]]) -> str:
    out = [HEADER.rstrip("\n"), "devices:" if entries else "devices: {}"]
    for device in sorted(entries):
        metrics = entries[device]
        if not metrics:
            continue
        out.append(f"  {device}:")
        for metric in sorted(metrics):
            e = metrics[metric]
            parts = [f"scale: {_num(e['scale'])}", f"offset: {_num(e['offset'])}"]
            if e.get("reference"):
                parts.append(f"reference: {json.dumps(str(e['reference']), ensure_ascii=False)}")
            out.append(f"    {metric}: {{{', '.join(parts)}}}")
    return "\n".join(out) + "\n"


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _append_log(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply_change(
    site: SiteConfig, change: Change, reference: str, by: str, note: str, now: float
) -> tuple[Path, Path]:
    """Write the factors file and append the log; returns (file, log)."""
    path = site.calibration_path()
    log_path = path.with_name(LOG_NAME)
    entries = read_file_entries(path)
    metrics = entries.setdefault(change.device, {})
    if change.new is None:
        metrics.pop(change.metric, None)
        if not metrics:
            entries.pop(change.device)
    else:
        metrics[change.metric] = {
            "scale": change.new.scale,
            "offset": change.new.offset,
            "reference": reference,
        }
    tmp = _write_atomic(path, render_file(entries))
    record: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "by": by,
        "device": change.device,
        "metric": change.metric,
        "reference": reference,
        "method": change.method,
        "from": change.source,
        "pairs": [list(p) for p in change.pairs],
        "old": None if change.old is None else [change.old.scale, change.old.offset],
        "new": None if change.new is None else [change.new.scale, change.new.offset],
        "note": note,
    }
    if change.fitted is not None:
        record["r2"] = round(change.fitted.r2, 6)
        record["max_residual"] = change.fitted.max_residual
    try:
        _append_log(log_path, record)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, log_path


def render_log(log_path: Path, device: str | None, out: TextIO) -> int:
    if not log_path.is_file():
        print(f"no calibration log at {log_path}", file=out)
        return 0
    rows = [["when", "by", "device.metric", "method", "old", "new", "r2", "reference", "note"]]
    bad = 0
    for n, line in enumerate(log_path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
            if device is not None and r["device"] != device:
                continue

            def fmt(f: list[float] | None) -> str:
                return "-" if f is None else f"{f[0]:.4g}x{f[1]:+.4g}"

            r2 = r.get("r2")
            rows.append(
                [
                    str(r["ts"]),
                    str(r["by"]),
                    f"{r['device']}.{r['metric']}",
                    str(r["method"]),
                    fmt(r["old"]),
                    fmt(r["new"]),
                    "-" if r2 is None else f"{r2:.3f}",
                    str(r["reference"]),
                    str(r.get("note", "")),
                ]
            )
        except (ValueError, KeyError, TypeError, IndexError):
            bad += 1
            print(f"{log_path}:{n}: unreadable log line, skipped", file=sys.stderr)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    return 1 if bad else 0


# ------------------------------------------------------------------ the command


def _pair(text: str) -> tuple[float, float]:
    device, sep, reference = text.partition(":")
    try:
        pair = (float(device), float(reference))
    except ValueError:
        pair = (math.nan, math.nan)
    if not sep or not all(math.isfinite(v) for v in pair):
        raise argparse.ArgumentTypeError(f"expected DEVICE:REFERENCE numbers, got {text!r}")
    return pair


def _csv_pairs(path: Path) -> list[tuple[float, float]]:
    pairs = []
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                x, y = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                if n == 1:
                    continue  # a header
                raise CalibrationError(f"{path}:{n}: expected device,reference numbers") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise CalibrationError(f"{path}:{n}: {row[0]},{row[1]} are not finite numbers")
            pairs.append((x, y))
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate calibrate",
        description="Calibrate a device's metric against a reference monitor; logged.",
    )
    parser.add_argument("--config", "-c", type=Path, required=True, help="site.yaml")
    parser.add_argument("device", nargs="?", help="device id in site.yaml")
    parser.add_argument("metric", nargs="?", help="metric, e.g. pm10")
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--pair",
        type=_pair,
        action="append",
        default=[],
        metavar="DEVICE:REFERENCE",
        help="a co-location pair (repeat: two = the line through both, more = least squares)",
    )
    how.add_argument("--csv", type=Path, help="pairs from a CSV file: device,reference")
    how.add_argument("--scale", type=float, help="set the factors directly: scale ...")
    how.add_argument("--reset", action="store_true", help="remove the calibration")
    how.add_argument("--log", action="store_true", help="print the calibration log")
    parser.add_argument("--offset", type=float, help="... and offset (with --scale or alone)")
    parser.add_argument(
        "--from",
        dest="source",
        choices=["published", "raw"],
        default="published",
        help="the pairs' device values: as dustgate published them (default) or raw",
    )
    parser.add_argument("--reference", help="the reference monitor (make, serial, station)")
    parser.add_argument("--by", help="who calibrates (name)")
    parser.add_argument("--note", default="", help="a remark for the log")
    parser.add_argument("--yes", "-y", action="store_true", help="write without asking")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        site = load_site_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    log_path = site.calibration_path().with_name(LOG_NAME)
    if args.log:
        return render_log(log_path, args.device, sys.stdout)
    if not args.device or not args.metric:
        parser.error("give DEVICE and METRIC (or --log)")
    if not args.by or (not args.reset and not args.reference):
        parser.error("--reference and --by are required: the log says who calibrated against what")
    dev = next((d for d in site.devices if d.id == args.device), None)
    if dev is None:
        known = ", ".join(d.id for d in site.devices) or "none"
        parser.error(f"no device {args.device!r} in {args.config} ({known})")
    metrics = device_metrics(dev.model_dump(exclude_none=True), site.profile_search())
    if metrics is not None and args.metric not in metrics:
        parser.error(f"{args.device} has no metric {args.metric!r} ({', '.join(sorted(metrics))})")
    in_file = args.metric in read_file_entries(site.calibration_path()).get(dev.id, {})
    if args.metric in dev.calibration and not in_file:
        parser.error(
            f"{dev.id}.{args.metric} is calibrated in {args.config} itself; change it there "
            f"or remove it there and use this command (which writes {site.calibration_path()})"
        )
    old = dev.calibration[args.metric].factors() if args.metric in dev.calibration else None
    try:
        pairs = _csv_pairs(args.csv) if args.csv else args.pair
        change = plan_change(
            dev.id,
            args.metric,
            old,
            pairs=pairs,
            source=args.source,
            scale=args.scale,
            offset=args.offset,
            reset=args.reset,
        )
    except (CalibrationError, OSError) as exc:
        print(f"dustgate calibrate: {exc}", file=sys.stderr)
        return 1
    reference = args.reference or ""
    print(render_change(change, reference or "-"))
    if not args.yes:
        if not sys.stdin.isatty():
            print("not written: add --yes to write without asking", file=sys.stderr)
            return 1
        if input("write it? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not written")
            return 1
    path, log = apply_change(site, change, reference, args.by or "", args.note, time.time())
    print(f"written to {path}, logged in {log}; restart the agent to apply")
    return 0
