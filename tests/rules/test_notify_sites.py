"""Acceptance: two sites' rules notify one district robot with a 5-minute limit.

One rule for both sites. The rule service (its clock injected) with the real notifier, posting to a local webhook
receiver that counts what arrives: both sites' alarms are delivered (the second one used
to be dropped: the limit was per notifier), site A's repeats within the limit are folded
into one message sent when the limit runs out, and what arrives stands for every
transition, none lost.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from rulehelpers import ListSink
from webhooks import Hook

from gateway import protocol as p
from rules.core.config import load_rules_file
from rules.core.notifylimit import hhmm
from rules.service.notify import Notifier
from rules.service.service import RulesService, ServiceOptions

T0 = 1_780_000_000.0

RULES = """\
mqtt: {{host: 127.0.0.1, port: 1}}
state_dir: {state}
sites: [site-a, site-b]
actuators:
  site-a/cannon-1: {{}}
  site-b/cannon-1: {{}}
notifiers:
  district: {{type: robot, url: "{url}", vendor: dingtalk, secret: SECtest, min_interval: 5m}}
rules:
"""
RULE = """\
  - id: pm10-gate
    site: [site-a, site-b]
    metric: pm10
    devices: [gate]
    aggregate: last
    window: 60s
    above: 150
    clear: 100
    actions: {lease: [cannon-1], lease_s: 30s, cooldown: 10s}
    notify: [district]
"""


def pm10(site: str, t: float) -> float:
    """Site A: on at 0, off at 90, on at 120, off at 150. Site B: on at 60, stays on."""
    if site == "site-a":
        return 200.0 if t < 90 or 120 <= t < 150 else 50.0
    return 80.0 if t < 60 else 200.0


async def test_two_sites_share_a_robot_both_delivered_repeats_folded(
    tmp_path: Path, hook: Hook
) -> None:
    text = RULES.format(state=tmp_path / "state", url=hook.url) + RULE
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    rf = load_rules_file(path, text=text)
    notifier = Notifier(rf.notifiers, backoff_base=0.01)
    svc = RulesService(
        path, rf, ServiceOptions(client_id="t"), sink=ListSink(), notifier=notifier, now=T0
    )
    await notifier.start()
    try:
        for k in range(61):  # ten minutes, a reading of each site and a tick every 10 s
            now = T0 + 10 * k
            for seq, site in enumerate(("site-a", "site-b")):
                payload = json.dumps(
                    {
                        "ts": round(now * 1000),
                        "seq": k * 2 + seq,
                        "values": {"pm10": pm10(site, now - T0)},
                    }
                ).encode()
                svc.on_message(p.telemetry_topic(site, "gate"), payload, now)
            svc.on_tick(now)
            if k in (30, 60):  # let the worker post what was due by then
                assert await notifier.drain(10)
        deadline = time.monotonic() + 10
        while notifier.counters["sent"] < 3 and time.monotonic() < deadline:
            assert await notifier.drain(10)
    finally:
        await notifier.close()
    contents = [b["text"]["content"] for b in hook.received]
    assert len(contents) == 3 and notifier.counters["sent"] == 3
    a_on, b_on, a_folded = contents
    assert a_on == "[warning] site-a: pm10-gate: on, last(pm10, 60s) > 150 = 200.0"
    assert b_on == "[warning] site-b: pm10-gate: on, last(pm10, 60s) > 150 = 200.0"
    # site A's off, on, off within the 5 minutes: the last word, standing for the other two
    assert re.fullmatch(
        rf"\[warning\] site-a: pm10-gate: off \(cleared\) after .* \(2 more since "
        rf"{hhmm(T0 + 90)}\)",
        a_folded,
    ), a_folded
    assert svc.engine.counters["notify_suppressed"] == 3
    assert svc.engine.counters["notify_flushed"] == 1
    assert all("sign=" in path and "timestamp=" in path for path in hook.paths)  # signed
