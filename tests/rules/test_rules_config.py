"""rules.yaml: the example loads; every mistake is reported with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.configfile import ConfigError
from rules.core.config import RobotNotifier, WebhookNotifier, load_rules_file

ROOT = Path(__file__).resolve().parents[2]

GOOD_HEAD = """\
actuators:
  site-01/cannon-1: {litres_per_minute: 25, max_on: 30m}
notifiers:
  office: {type: robot, url: "https://example.com/robot"}
rules:
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_rules_file("rules.yaml", text=text)
    return [str(i) for i in exc.value.issues]


def test_example_rules_file_loads_and_means_what_it_says() -> None:
    rf = load_rules_file(ROOT / "examples" / "rules.yaml")
    by_id = {r.id: r for r in rf.rules}
    assert set(by_id) == {"pm10-gate", "tsp-5min", "pm10-vs-county", "noise-day"}
    gate = by_id["pm10-gate"]
    assert (gate.aggregate, gate.window, gate.above, gate.clear) == ("mean", 900.0, 150.0, 100.0)
    assert {i.name for i in gate.unless} == {"frost", "high_wind", "low_water"}
    assert gate.actions.max_on == 2400.0
    assert by_id["tsp-5min"].actions.max_on == 2700.0  # inherited from the actuator
    rel = by_id["pm10-vs-county"]
    assert rel.relative_to is not None and rel.relative_to.site == "county"
    assert by_id["noise-day"].actions.lease == []
    assert isinstance(rf.notifiers["site-office"], RobotNotifier)
    assert isinstance(rf.notifiers["ops"], WebhookNotifier)
    assert {(a.site, a.id) for a in rf.actuator_list} == {
        ("site-01", "cannon-1"),
        ("site-01", "cannon-2"),
    }


def test_unknown_key_points_at_the_key() -> None:
    text = (
        GOOD_HEAD
        + """\
  - id: a
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    above: 150
    windw: 5m
"""
    )
    assert issues(text) == [
        "rules.yaml:11:5: rules[0].windw: unknown key (check the spelling; see the example config)"
    ]


def test_clear_on_the_wrong_side() -> None:
    text = (
        GOOD_HEAD
        + """\
  - id: a
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    above: 150
    clear: 180
  - id: b
    site: site-01
    metric: water_level
    devices: [water-tank]
    below: 20
    clear: 10
"""
    )
    got = issues(text)
    assert len(got) == 2
    assert got[0].startswith("rules.yaml:11:12: rules[0].clear: clear (180) must be at or below")
    assert got[1].startswith("rules.yaml:17:12: rules[1].clear: clear (10) must be at or above")


def test_cross_references_are_checked_with_lines() -> None:
    text = (
        GOOD_HEAD
        + """\
  - id: a
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    above: 150
    actions: {lease: [cannon-1, cannon-9]}
    notify: [office, pager]
  - id: a
    site: site-01
    metric: tsp
    devices: [gate-monitor]
    above: 800
"""
    )
    got = issues(text)
    assert got == [
        "rules.yaml:11:33: rules[0].actions.lease[1]: "
        "actuator site-01/cannon-9 is not declared under actuators:",
        "rules.yaml:12:22: rules[0].notify[1]: "
        "notifier 'pager' is not defined under notifiers: (office)",
        "rules.yaml:13:9: rules[1].id: duplicate rule id 'a' (first used by rules[0])",
    ]


def test_threshold_window_and_interlock_mistakes() -> None:
    text = (
        GOOD_HEAD
        + """\
  - id: a
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    window: 2d
    above: 150
    below: 10
    unless:
      - {name: frost, metric: temp, devices: [gate-monitor]}
  - id: b
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    active: {hours: "6-22", tz: Mars/Olympus}
"""
    )
    got = "\n".join(issues(text))
    assert "rules.yaml:10:13: rules[0].window: Input should be less than or equal to 86400" in got
    assert "rules.yaml:12:12: rules[0].below: give either above: or below:, not both" in got
    assert "rules.yaml:14:9: rules[0].unless[0]: needs a threshold" in got
    assert "rules[1].active.hours: expected a window like '06:00-22:00'" in got
    assert "rules[1].active.tz: unknown time zone 'Mars/Olympus'" in got


def test_sites_list_limits_rule_sites_and_actuator_list_form() -> None:
    text = """\
sites: [site-01]
actuators:
  - {site: site-01, id: cannon-1, litres_per_minute: 10}
rules:
  - id: a
    site: [site-01, site-02]
    metric: pm10
    devices: [gate-monitor]
    above: 150
    actions: {lease: cannon-1}
"""
    got = issues(text)
    assert "rules.yaml:6:11: rules[0].site: site 'site-02' is not in the top-level sites" in got[0]
    assert "actuator site-02/cannon-1 is not declared" in got[1]


def test_notifier_type_errors_name_the_notifier() -> None:
    text = """\
notifiers:
  ops: {type: webhook, url: "ftp://nope", extra: 1}
"""
    got = issues(text)
    assert got == [
        "rules.yaml:2:29: notifiers.ops.url: String should match pattern '^https?://' "
        "(got 'ftp://nope')",
        "rules.yaml:2:43: notifiers.ops.extra: unknown key (check the spelling; see the example "
        "config)",
    ]


def test_service_partition_is_validated_with_its_line() -> None:
    rf = load_rules_file("rules.yaml", text="service: {partition: 2/5}\n")
    assert rf.service.partition == "2/5"
    assert load_rules_file("rules.yaml", text="rules: []\n").service.partition is None
    got = issues("service:\n  partition: 5/5\n")
    assert len(got) == 1
    assert got[0].startswith("rules.yaml:2:14: service.partition:")
    assert "index K must be 0..4 for N=5" in got[0]
    assert issues("service: {group: x}\n")[0].startswith("rules.yaml:1:11: service.group: unknown")


def test_service_shared_group_is_refused_with_the_reason() -> None:
    (got,) = issues("service:\n  shared_group: rules\n")
    assert got.startswith("rules.yaml:2:17: service.shared_group:")
    assert "hand out messages, not sites" in got and "partition: K/N" in got


def test_relative_paths_resolve_against_the_rules_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "dustgate"
    conf.mkdir(parents=True)
    path = conf / "rules.yaml"
    path.write_text(
        "state_dir: state/rules\n"
        "influx: {url: 'http://127.0.0.1:8086', spool_dir: spool, dead_letter_file: /var/dl.jsonl}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the service is started from another directory
    rf = load_rules_file(path)
    assert rf.state_dir == conf / "state" / "rules"
    assert rf.influx is not None
    assert rf.influx.spool_dir == conf / "spool"
    assert rf.influx.dead_letter_file == Path("/var/dl.jsonl")  # absolute: unchanged
    # the default state_dir too, and a path given relative to the cwd
    monkeypatch.chdir(tmp_path)
    rf = load_rules_file(Path("etc/dustgate/rules.yaml"), text="rules: []\n")
    assert rf.state_dir.resolve() == (conf / "state" / "rules").resolve()
    absolute = load_rules_file(path, text=f"state_dir: {tmp_path / 'abs'}\n")
    assert absolute.state_dir == tmp_path / "abs"
