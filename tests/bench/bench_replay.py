"""Replay throughput: readings/s of ``rules.history.replay`` over synthetic 1 Hz data.

Ten devices at 1 Hz on site-01 plus the county background station: one week
is 6,048,000 readings, the issue's workload and the default (about four
minutes for three rounds); ``--hours 24`` replays a one-day slice for a quick
look, and says so.

Printed: readings/s of the full replay (CSV parsing + engine + statistics)
with ``examples/rules.yaml`` plus one PM10 rule per extra monitor (every
device is read by some rule), and the ratio against a baseline measured in
the same run: the bare loop that parses the same CSV rows into floats and
appends them to deques, each the best of ``--rounds`` alternating rounds
(the slowest replay round is printed too). The replay runs as ``dustgate
replay`` runs it (the input read ahead in a second process,
:mod:`rules.history.readahead`) and, for comparison, in one process. Goal: >= 200,000
readings/s.

    .venv/bin/python tests/bench/bench_replay.py [--hours 168] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import random
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rules.core.config import load_rules_file  # noqa: E402
from rules.history.replay import read_csv, replay  # noqa: E402

EXTRA = [f"monitor-{i}" for i in range(2, 7)]
DEVICES = [
    ("site-01", "gate-monitor"),
    ("site-01", "sds011"),
    ("site-01", "pms5003"),
    ("site-01", "water-tank"),
    ("county", "county-station"),
    *(("site-01", d) for d in EXTRA),
]
COLUMNS = ["pm10", "pm25", "tsp", "noise", "wind_speed", "temp", "water_level"]
START_MS = 1_780_000_000_000


def make_csv(seconds: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["ts", "site", "device", *COLUMNS])
    for s in range(seconds):
        # dust comes in bursts of a few hours; wind and temperature drift slowly
        base = 90 + 110 * max(0.0, math.sin(s / 5400.0)) + rnd.uniform(-20, 20)
        wind = 6 + 5 * math.sin(s / 7000.0)
        temp = 8 + 6 * math.sin(s / 43200.0)
        ts = START_MS + s * 1000
        for site, dev in DEVICES:
            if dev == "water-tank":
                w.writerow(
                    [ts, site, dev, "", "", "", "", "", "", f"{60 + 30 * math.sin(s / 20000):.1f}"]
                )
            elif dev == "county-station":
                w.writerow(
                    [ts, site, dev, f"{base * 0.5:.1f}", f"{base * 0.3:.1f}", "", "", "", "", ""]
                )
            elif dev == "gate-monitor":
                w.writerow([ts, site, dev, f"{base:.1f}", f"{base * 0.6:.1f}", f"{base * 4:.1f}",
                            f"{65 + rnd.uniform(-5, 8):.1f}", f"{wind:.1f}", f"{temp:.1f}", ""])  # fmt: skip
            else:
                v = base + rnd.uniform(-10, 10)
                w.writerow([ts, site, dev, f"{v:.1f}", f"{v * 0.6:.1f}", "", "", "", "", ""])
    return out.getvalue()


def rules_text() -> str:
    text = (ROOT / "examples" / "rules.yaml").read_text()
    for dev in EXTRA:
        text += (
            f"  - id: pm10-{dev}\n    site: site-01\n    metric: pm10\n    devices: [{dev}]\n"
            "    window: 15m\n    above: 150\n    clear: 100\n    for: 1m\n"
            "    actions: {lease: [cannon-2], run_for: 5m, cooldown: 5m}\n"
        )
    return text


def baseline(data: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    reader = csv.reader(io.StringIO(data))
    next(reader)
    windows: dict[str, deque[tuple[float, float]]] = {}
    n = 0
    for row in reader:
        ts = int(row[0]) / 1000.0
        dq = windows.get(row[2])
        if dq is None:
            dq = windows[row[2]] = deque(maxlen=900)
        for cell in row[3:]:
            if cell:
                dq.append((ts, float(cell)))
        n += 1
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=168.0, help="data (168 = one week)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; best of each")
    args = ap.parse_args()
    seconds = int(args.hours * 3600)
    data = make_csv(seconds)
    rf = load_rules_file("bench-rules.yaml", text=rules_text())
    # alternating rounds, best of each: this machine is shared and its speed drifts
    base_times: list[float] = []
    replay_times: list[float] = []
    single_times: list[float] = []
    for _ in range(args.rounds):
        n_base, t_base = baseline(data)
        base_times.append(t_base)
        for ahead, times in ((True, replay_times), (False, single_times)):
            t0 = time.perf_counter()
            (result,) = replay(read_csv(io.StringIO(data)), [rf], ahead=ahead)
            times.append(time.perf_counter() - t0)
            assert result.readings == n_base, (result.readings, n_base)
    t_base, t_replay = min(base_times), min(replay_times)
    rate, base_rate = result.readings / t_replay, n_base / t_base
    worst = result.readings / max(replay_times)
    single = result.readings / min(single_times)
    week = 7 * 86400 * len(DEVICES)
    print(f"data: {args.hours:g} h of 1 Hz data x {len(DEVICES)} devices = {n_base} readings"
          f" ({n_base / week:.1%} of one week = {week} readings)")  # fmt: skip
    print(
        f"best of {args.rounds} alternating rounds (slowest replay round: {worst:,.0f} readings/s)"
    )
    print(f"baseline (csv -> floats -> deques): {base_rate:,.0f} readings/s ({t_base:.2f} s)")
    print(f"replay (csv -> engine -> stats):    {rate:,.0f} readings/s ({t_replay:.2f} s),"
          f" input read ahead in a second process as the CLI does")  # fmt: skip
    print(f"replay in one process:              {single:,.0f} readings/s"
          f" ({min(single_times):.2f} s, ratio {single / base_rate:.2f})")  # fmt: skip
    print(f"ratio replay/baseline: {rate / base_rate:.2f} (two processes against one);"
          f" one week takes {week / rate:.0f} s; goal 200,000 readings/s: {'met' if rate >= 200_000 else 'NOT met'}")  # fmt: skip
    for s in result.rules.values():
        print(f"  {s.rule}: triggers={s.triggers} active={s.active_min:.0f} min "
              f"water={s.water_l:.0f} l blocked={s.blocked_min:.0f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
