"""The closed loop, as `make demo` runs it, bounded: it must close, and land in InfluxDB.

Real mosquitto, real influxd, the agent and the rule engine as their own
processes, devices simulated at the wire (Modbus RTU and UART on ptys).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_closes_the_loop(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--dir",
            str(workdir),
            "--duration",
            "240",
            "--exit-when-closed",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = proc.stdout + proc.stderr
    logs = (
        "".join(
            f"\n--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(workdir.glob("*.log"))
        )
        if workdir.exists()
        else ""
    )
    assert proc.returncode == 0, out[-4000:] + logs
    assert "loop closed" in out
    assert re.search(
        r"console: http://127\.0\.0\.1:\d+/ +\(sign in as operator / demo-operator", out
    )
    assert "[x] spray started" in out and "[x] spray stopped" in out
    # the closing summary reports what the database holds, counted by query
    summary = next(line for line in out.splitlines() if line.startswith("InfluxDB:"))
    readings = int(summary.split()[1])
    changes = int(summary.split("and")[1].split()[0])
    assert readings > 50 and changes >= 2, summary
    # nothing left running: the demo's processes are gone
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
