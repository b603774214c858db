"""Soak: a real agent, a real-time platform cut of 5 minutes, a SIGKILL inside it.

``make soak`` (or ``python tests/soak/soak_hj212_cut.py --cut 300``). Too slow
for CI (about 8 minutes); CI runs the same scenario on a fake clock
(tests/agent/test_uplink_backfill.py). Here everything is real and in real
time: mosquitto, a Modbus TCP station, the agent as a process (killed with
SIGKILL half way through the cut and started again), and the strict platform
simulator, which is stopped for ``--cut`` seconds. Passes when every minute
from the first record to the last arrived, once, in order, and every packet
passed the platform's checks.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.localservices import Mosquitto  # noqa: E402
from tests.agent.agent_harness import (  # noqa: E402
    AgentProcess,
    pm_devices,
    start_servers,
    wait_until,
    write_site,
)
from tests.agent.hj212_platform import PlatformSim  # noqa: E402


def minutes(platform: PlatformSim) -> list[str]:
    return platform.record_times("2051")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cut", type=float, default=300.0, help="seconds the platform is away")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dustgate-soak-"))
    mosquitto = Mosquitto(work / "mosquitto").start()
    servers = start_servers(pm_tcp_units=1)
    platform = PlatformSim()
    servers.sim.run(platform.start())
    config = write_site(
        work / "site.yaml",
        mosquitto.port,
        servers,
        devices=pm_devices("tcp-1", 1, interval=1.0),
        uplinks=[
            {
                "type": "hj212",
                "name": "city",
                "host": "127.0.0.1",
                "port": platform.port,
                "mn": platform.mn,
                "pw": platform.pw,
                "hourly": False,
                "realtime": False,
                "reconnect_max": "5s",
                "devices": ["pm-1"],
            }
        ],
    )
    agent = AgentProcess(config).start()
    failures: list[str] = []
    try:
        wait_until(lambda: minutes(platform), 130, "the first minute record")
        before = len(minutes(platform))
        print(f"first record {minutes(platform)[0]}; cutting the platform for {args.cut:.0f} s")
        servers.sim.run(platform.cut())
        cut_at = time.monotonic()
        time.sleep(args.cut / 2)
        agent.kill()  # SIGKILL: nothing saved on the way out
        print(f"agent SIGKILLed {time.monotonic() - cut_at:.0f} s into the cut; restarting")
        agent = AgentProcess(config).start()
        time.sleep(max(0.0, args.cut - (time.monotonic() - cut_at)))
        servers.sim.run(platform.start())
        back_at = time.monotonic()
        expected = before + int(args.cut // 60)
        wait_until(lambda: len(minutes(platform)) >= expected, 60, f"{expected} minute records")
        drained = time.monotonic() - back_at
        time.sleep(70)  # one more live minute after the backlog
        got = minutes(platform)
        stamps = [datetime.strptime(t, "%Y%m%d%H%M%S") for t in got]
        gaps = [
            f"{a:%H:%M}->{b:%H:%M}"
            for a, b in itertools.pairwise(stamps)
            if (b - a).total_seconds() != 60
        ]
        print(
            f"{len(got)} minute records {got[0][8:12]}..{got[-1][8:12]}; "
            f"{len(got) - before} after the cut began; backlog drained {drained:.1f} s "
            f"after the platform came back; packets received {len(platform.received)}"
        )
        if gaps:
            failures.append(f"missing or out of order: {gaps}")
        if platform.duplicates("2051"):
            failures.append(f"duplicates: {platform.duplicates('2051')}")
        if platform.problems:
            failures.append(f"platform problems: {platform.problems[:5]}")
    finally:
        agent.stop()
        servers.sim.run(platform.cut())
        servers.stop()
        mosquitto.stop()
    for f in failures:
        print("FAIL:", f)
    print("PASS" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
