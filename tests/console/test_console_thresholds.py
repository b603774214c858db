"""Thresholds: preview over stored data (real influxd), save, two operators, roll back."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from consolehelpers import csrf_of, login, make_console, week_lines
from starlette.testclient import TestClient

from gateway.localservices import Influxd
from rules.console.store import sha256

RULES = """\
# district rules (comments must survive the console)
influx: {url: http://127.0.0.1:8086, database: dustgate}
actuators:
  s1/cannon-1: {litres_per_minute: 20}
rules:
  - id: pm10-gate          # the gate monitor
    site: s1
    metric: pm10
    devices: [mon]
    window: 15m
    above: 150
    clear: 100            # hysteresis
    for: 1m
    actions: {lease: [cannon-1], run_for: 10m, cooldown: 5m}
"""


def triggers(page: str, which: str) -> int:
    m = re.search(rf'<tr class="{which}"><th>{which}</th><td class="triggers">(\d+)', page)
    assert m is not None, page
    return int(m.group(1))


def form_of(client: TestClient, rule: str = "pm10-gate") -> dict[str, str]:
    page = client.get(f"/rules/{rule}").text
    values = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', page))
    values["csrf"] = csrf_of(client)
    return values


def test_two_operators_the_second_save_is_refused_with_the_others_change(tmp_path: Path) -> None:
    ctx, first = make_console(tmp_path, rules_text=RULES)
    second = TestClient(first.app, base_url="http://127.0.0.1")
    with first, second:
        login(first, "otto")
        login(second, "ada")
        a, b = form_of(first), form_of(second)
        assert a["base"] == b["base"] == sha256(RULES)
        r = first.post(
            "/rules/pm10-gate/save", data={**a, "threshold": "120"}, follow_redirects=False
        )
        assert r.status_code == 303
        saved = ctx.config.rules_file.read_text()
        assert "above: 120" in saved and "# hysteresis" in saved and "# district rules" in saved
        r = second.post("/rules/pm10-gate/save", data={**b, "clear": "90"})
        assert r.status_code == 409
        assert "changed since this form was opened" in r.text
        assert "-    above: 150" in r.text and "+    above: 120" in r.text  # the other's change
        assert ctx.config.rules_file.read_text() == saved  # nothing overwritten
        # the refused form starts from the file as it is now: saving again works
        again = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', r.text))
        assert again["base"] == sha256(saved)
        r = second.post(
            "/rules/pm10-gate/save",
            data={**again, "csrf": b["csrf"], "clear": "90"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        final = ctx.config.rules_file.read_text()
        assert "above: 120" in final and "clear: 90 " in final
    saves = [e for e in ctx.store.audit_entries("rules") if e.action == "rules_save"]
    assert [e.user for e in saves] == ["ada", "otto"]
    assert "+    clear: 90" in saves[0].detail and "-    clear: 100" in saves[0].detail


def test_a_file_edited_on_disk_after_the_preview_is_not_overwritten(tmp_path: Path) -> None:
    ctx, client = make_console(tmp_path, rules_text=RULES)
    with client:
        login(client, "otto")
        form = form_of(client)
        r = client.post("/rules/pm10-gate/preview", data={**form, "threshold": "130"})
        assert r.status_code == 200 and "+    above: 130" in r.text
        edited = RULES.replace("window: 15m", "window: 10m  # by hand")
        ctx.config.rules_file.write_text(edited)
        r = client.post("/rules/pm10-gate/save", data={**form, "threshold": "130"})
        assert r.status_code == 409
        assert "+    window: 10m  # by hand" in r.text
        assert ctx.config.rules_file.read_text() == edited


def test_field_errors_show_the_rules_files_line_and_write_nothing(tmp_path: Path) -> None:
    ctx, client = make_console(tmp_path, rules_text=RULES)
    with client:
        login(client, "otto")
        form = form_of(client)
        r = client.post("/rules/pm10-gate/save", data={**form, "clear": "400", "for": "soon"})
        assert r.status_code == 400
        assert "expected a duration" in r.text  # form level
        r = client.post("/rules/pm10-gate/save", data={**form, "clear": "400"})
        assert r.status_code == 400
        assert re.search(r'class="ferr">line 12: clear \(400\) must be at or below', r.text), r.text
    assert ctx.config.rules_file.read_text() == RULES


def test_every_version_is_kept_and_any_can_be_rolled_back(tmp_path: Path) -> None:
    ctx, client = make_console(tmp_path, rules_text=RULES)
    with client:
        login(client, "otto")
        for t in ("140", "130", "120"):
            r = client.post(
                "/rules/pm10-gate/save",
                data={**form_of(client), "threshold": t},
                follow_redirects=False,
            )
            assert r.status_code == 303
        versions = ctx.store.versions()
        assert [v.note for v in versions][:3] == ["edit rule pm10-gate"] * 3
        first = ctx.store.version_by_sha(sha256(RULES))
        assert first is not None
        page = client.get(f"/rules/versions/{first.id}").text
        base = re.search(r'name="base" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        r = client.post(
            f"/rules/versions/{first.id}/rollback",
            data={"csrf": csrf_of(client), "base": base},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert ctx.config.rules_file.read_text() == RULES
        # a stale page cannot roll back over a newer file
        r = client.post(
            f"/rules/versions/{first.id}/rollback", data={"csrf": csrf_of(client), "base": base}
        )
        assert r.status_code == 409
    assert ctx.store.audit_entries("rules")[0].target == f"rules:roll back to version {first.id}"


@pytest.mark.integration
def test_preview_replays_the_last_week_from_influxdb(tmp_path: Path, influxd: Influxd) -> None:
    influxd.create_database("dustgate")
    now = time.time()
    influxd.write("dustgate", week_lines("s1", "mon", now))
    influxd.write("dustgate", week_lines("s1", "other", now, step_s=600))  # not read by the rule
    influxd.write("dustgate", week_lines("s2", "mon", now, step_s=600))  # another site
    extra = f"influx: {{url: '{influxd.url}', database: dustgate}}\n"
    ctx, client = make_console(tmp_path, rules_text=RULES, extra=extra)
    with client:
        login(client, "otto")
        r = client.post("/rules/pm10-gate/preview", data={**form_of(client), "threshold": "120"})
        assert r.status_code == 200, r.text
        before, after = triggers(r.text, "before"), triggers(r.text, "after")
        replayed = re.search(r"(\d+) stored readings replayed", r.text)
        assert replayed is not None  # only what the rule reads: mon at s1, a week at 1/min
        assert 7 * 1440 - 5 <= int(replayed.group(1)) <= 7 * 1440 + 1
        assert 5 <= before <= 8  # one spike a day over 150
        assert after >= 3 * before  # four a day over 120
        assert "new ON 120" in r.text and "old ON 150" in r.text  # the chart's two thresholds
        assert ctx.config.rules_file.read_text() == RULES  # a preview writes nothing
        # InfluxDB away: the page says so, the console lives on
        influxd.stop()
        r = client.post("/rules/pm10-gate/preview", data={**form_of(client), "threshold": "120"})
        assert r.status_code == 200
        assert re.search(
            r'class="error">[^<]*(cannot reach|not reachable)[^<]*InfluxDB|InfluxDB[^<]*not reachable',
            r.text,
        )
        page = client.get("/site/s1")
        assert page.status_code == 200 and "History unavailable: InfluxDB" in page.text


def test_the_preview_fetches_what_the_rule_reads() -> None:
    from rules.console.history import rule_devices
    from rules.core.model import Rule

    rule = Rule.model_validate(
        {
            "id": "r", "site": ["s1", "s2"], "metric": "pm10", "devices": ["a", "b"], "above": 80,
            "relative_to": {"site": "county", "devices": ["station"]},
            "unless": [{"name": "frost", "metric": "temp", "devices": ["w"], "below": 3},
                       {"name": "tank", "metric": "water_level", "site": "yard", "devices": ["t"], "below": 10}],
        }
    )  # fmt: skip
    assert rule_devices(rule, "s2") == {
        ("s2", "a"),
        ("s2", "b"),
        ("county", "station"),
        ("s2", "w"),
        ("yard", "t"),
    }


def test_a_missing_rules_file_is_said_and_nothing_crashes(tmp_path: Path) -> None:
    ctx, client = make_console(tmp_path, rules_text=RULES)
    with client:
        login(client, "otto")
        form = form_of(client)
        ctx.config.rules_file.unlink()
        for r in (
            client.get("/rules"),
            client.get("/rules/pm10-gate"),
            client.post("/rules/pm10-gate/save", data=form),
        ):
            assert r.status_code == 503 and "cannot read the rules file" in r.text
        assert client.get("/").status_code == 200  # the board keeps the rules it had
        assert not ctx.config.rules_file.exists()
