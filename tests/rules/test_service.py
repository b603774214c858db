"""The service shell without a broker: message handling, bad input, actions -> wire,
reload, persistence, overrides. The clock is injected (``now``); no sleeps."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rulehelpers import ListSink

from gateway import protocol as p
from gateway.mqttinternals import Inbox
from rules.core.config import load_rules_file
from rules.service import health, receive, service, session, state
from rules.service.notify import Notifier
from rules.service.outbound import Publish
from rules.service.override import OverrideRequest, override_topic
from rules.service.reload import FileWatch
from rules.service.service import RulesService, ServiceOptions, served_sites
from rules.service.state import STATE_FILE, write_atomic
from rules.sink.lineprotocol import parse_line

T0 = 1_780_000_000.0

RULES = """\
mqtt: {{host: 127.0.0.1, port: 1}}
state_dir: {state}
sites: [site-01]
actuators:
  site-01/cannon-1: {{}}
  site-01/cannon-2: {{}}
defaults: {{lease_s: 30s, min_staleness: 30s, override_lease_s: 30s}}
rules:
  - id: pm10-gate
    site: site-01
    metric: pm10
    devices: [gate]
    aggregate: last
    window: 60s
    above: {above}
    clear: 100
    for: {for_}
    actions: {{lease: [cannon-1], lease_s: 30s, cooldown: 20s}}
"""


def write_rules(tmp_path: Path, above: float = 150, for_: str = "0s") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(state=tmp_path / "state", above=above, for_=for_))
    return path


def make_service(tmp_path: Path, now: float = T0, **kw: Any) -> tuple[RulesService, ListSink]:
    path = tmp_path / "rules.yaml"
    if not path.exists():
        write_rules(tmp_path, **kw)
    sink = ListSink()
    text = path.read_text()
    svc = RulesService(
        path,
        load_rules_file(path, text=text),
        ServiceOptions(client_id="test-engine"),
        sink=sink,
        notifier=Notifier({}),
        now=now,
        rules_text=text,
    )
    return svc, sink


def telemetry(pm10: float, ts: float, seq: int, **extra: Any) -> bytes:
    return json.dumps(
        {"ts": round(ts * 1000), "seq": seq, "values": {"pm10": pm10}, **extra}
    ).encode()


TOPIC = p.telemetry_topic("site-01", "gate")


def commands(pubs: list[Publish]) -> list[p.Command]:
    return [p.decode(p.Command, x.payload) for x in pubs if x.topic.endswith("/cmd")]


def events(pubs: list[Publish], kind: str | None = None) -> list[p.Event]:
    out = [p.decode(p.Event, x.payload) for x in pubs if x.topic.endswith("/events")]
    return [e for e in out if kind is None or e.kind == kind]


# ------------------------------------------------------------- the main loop


def test_spike_leases_renews_then_switches_off(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    assert svc.on_message(TOPIC, telemetry(80, T0, 1), T0) == []
    pubs = svc.on_message(TOPIC, telemetry(200, T0 + 1, 2), T0 + 1)
    (on,) = commands(pubs)
    cmd_pub = next(x for x in pubs if x.topic.endswith("/cmd"))
    assert cmd_pub.topic == p.cmd_topic("site-01", "cannon-1")
    assert cmd_pub.qos == 1 and cmd_pub.expiry_s == 30  # never delivered after its lease
    assert on.action == "on" and on.lease_s == 30 and on.source == "rule"
    assert on.rule == "pm10-gate" and on.ts == round((T0 + 1) * 1000)
    assert [e.kind for e in events(pubs)] == ["on"]
    # the rule holds: renewed every lease_s / 3 by the tick
    assert commands(svc.on_tick(T0 + 5)) == []
    renew = commands(svc.on_tick(T0 + 11))
    assert [c.action for c in renew] == ["on"] and renew[0].id != on.id
    # the spike ends: an explicit off
    pubs = svc.on_message(TOPIC, telemetry(90, T0 + 12, 3), T0 + 12)
    (off,) = commands(pubs)
    assert off.action == "off" and off.rule == "pm10-gate" and off.lease_s is None
    assert [e.kind for e in events(pubs)] == ["off"]
    assert commands(svc.on_tick(T0 + 30)) == []
    # everything went to the sink: 3 readings and the 2 events
    assert len(sink.points("telemetry")) == 3
    assert [pt.tags["kind"] for pt in sink.points("rule_event")] == ["on", "off"]


BAD_PAYLOADS = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b'{"ts": 1, "seq": 1, "values": {"pm10": NaN}}',
    b'{"ts": 1, "seq": 1, "values": {"pm10": Infinity}}',
    b'{"ts": 1, "seq": 1, "values": {"pm10": 1e999}}',
    b'{"ts": 1, "seq": 1, "values": {"pm10": "200"}, "extra": 1}',
    b'{"ts": -5, "seq": 1, "values": {"pm10": 200}}',
    b'{"ts": 1, "seq": 1, "values": {"PM10!": 200}}',
    b'{"ts": 1, "seq": 1, "values": {"pm10": 200}, "status": "weird"}',
    b"\xff\xfe\x00garbage",
    b'{"ts": 1, "seq": 1, "values": {"pm10": 200}}' + b" " * (70 * 1024),
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_malformed_telemetry_is_counted_and_dropped(tmp_path: Path, payload: bytes) -> None:
    svc, sink = make_service(tmp_path)
    assert svc.on_message(TOPIC, payload, T0) == []
    assert svc.counters["decode_errors"] == 1
    assert sink.lines == []


def test_nan_and_inf_cannot_pass_the_protocol_decoder() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        payload = b'{"ts": 1, "seq": 1, "values": {"pm10": ' + literal + b"}}"
        with pytest.raises(p.ProtocolError):
            p.decode(p.Telemetry, payload)


def test_negative_particulates_never_spray_and_are_stored_flagged(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    pubs = svc.on_message(TOPIC, telemetry(-300, T0, 1), T0)
    pubs += svc.on_tick(T0 + 1)
    assert commands(pubs) == []
    assert svc.engine.counters["below_limit"] == 1
    (pt,) = sink.points("telemetry")
    assert pt.fields["pm10"] == -300.0 and pt.tags["pm10_flag"] == "fault"
    assert pt.tags["quality"] == "fault"  # not a valid reading
    assert svc.counters["stored_fault"] == 1


def test_duplicates_out_of_order_other_site_future_are_dropped(tmp_path: Path) -> None:
    svc, _sink = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(80, T0, 5), T0)
    assert svc.on_message(TOPIC, telemetry(500, T0, 5), T0 + 1) == []  # duplicate
    assert svc.on_message(TOPIC, telemetry(500, T0 - 5, 4), T0 + 1) == []  # out of order
    other = p.telemetry_topic("site-99", "gate")
    assert svc.on_message(other, telemetry(500, T0 + 1, 6), T0 + 1) == []
    assert svc.on_message(TOPIC, telemetry(500, T0 + 3600, 7), T0 + 1) == []  # clock wrong
    assert svc.engine.counters["duplicate"] == 1
    assert svc.engine.counters["out_of_order"] == 1
    assert svc.counters["other_site"] == 1
    assert svc.counters["future_ts"] == 1
    assert health.dropped(svc) == 4
    # the future reading did not poison the device: a correct one still acts
    assert [
        c.action for c in commands(svc.on_message(TOPIC, telemetry(500, T0 + 2, 8), T0 + 2))
    ] == ["on"]


def test_unknown_device_is_stored_but_not_evaluated(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    topic = p.telemetry_topic("site-01", "noise-meter")
    assert svc.on_message(topic, telemetry(999, T0, 1), T0) == []
    assert svc.engine.counters["unknown_device"] == 1
    assert len(sink.points("telemetry")) == 1


def test_bad_topics_are_counted(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    for topic in (
        "dustgate/v1/SITE/gate/telemetry",
        "dustgate/v1/site-01/telemetry",
        "other/v1/site-01/gate/telemetry",
        "dustgate/v1/site-01/cannon-1/whatever",
        "dustgate/v1/site-01/x/y/override",
    ):
        assert svc.on_message(topic, telemetry(500, T0, 1), T0) == []
    assert svc.counters["decode_errors"] == 5


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(
        [
            TOPIC,
            p.state_topic("site-01", "cannon-1"),
            p.status_topic("site-01", "gw"),
            p.events_topic("site-01"),
            override_topic("site-01", "cannon-1"),
            "dustgate/v1/site-01/+/telemetry",
        ]
    ),
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_garbage_never_raises_and_never_commands(
    tmp_path: Path, topic: str, payload: bytes
) -> None:
    svc, _ = make_service(tmp_path)
    pubs = svc.on_message(topic, payload, T0)
    assert commands(pubs) == []


def test_state_status_and_events_go_to_the_sink(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    state = p.ActuatorState(state="on", since=1_780_000_000_000, source="rule", cmd_id="x-1")
    status = p.GatewayStatus(state="online", ts=1_780_000_000_000, backlog=7)
    event = p.Event(ts=1_780_000_000_000, kind="interlock", text="frost")
    svc.on_message(p.state_topic("site-01", "cannon-1"), p.encode(state), T0)
    svc.on_message(p.status_topic("site-01", "gw-1"), p.encode(status), T0)
    svc.on_message(p.events_topic("site-01"), p.encode(event), T0)
    assert sink.points("actuator")[0].fields["on"] == 1
    assert sink.points("gateway")[0].fields["backlog"] == 7
    assert sink.points("rule_event")[0].tags["kind"] == "interlock"


def test_stats_line_carries_rates_and_counters(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    svc.on_message(TOPIC, b"junk", T0)
    svc.on_message(TOPIC, telemetry(200, T0, 1), T0)
    pt = parse_line(health.stats_line(svc, T0))
    assert pt.measurement == "gateway" and pt.tags == {"engine": "test-engine"}
    assert pt.fields["messages"] == 2 and pt.fields["decode_errors"] == 1
    assert pt.fields["commands_sent"] == 0  # nothing was actually published (no broker)
    assert isinstance(pt.fields["messages_per_s"], float)


def test_served_sites_include_background_and_interlock_sites(tmp_path: Path) -> None:
    text = """
actuators: {site-01/cannon-1: {}}
rules:
  - id: rel
    site: site-01
    metric: pm10
    devices: [gate]
    above: 80
    relative_to: {site: county, devices: [station]}
    unless: [{name: frost, site: weather, metric: temp, devices: [t], below: 3}]
"""
    rf = load_rules_file("r.yaml", text=text)
    assert served_sites(rf) == {"site-01", "county", "weather"}


# ------------------------------------------------------------------- reload


def test_invalid_edit_keeps_old_rules_and_reports_file_line(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    broken = (tmp_path / "rules.yaml").read_text().replace("clear: 100", "clear: 900")
    pubs = svc.reload_text(broken, T0)
    (err,) = events(pubs, "reload_error")
    assert err.severity == "warning"
    assert f"{tmp_path / 'rules.yaml'}:" in err.text and "clear" in err.text
    assert err.data is not None and err.data["errors"][0].split(":")[1].isdigit()  # the line
    assert svc.counters["reload_errors"] == 1
    # the running rules still work
    assert [c.action for c in commands(svc.on_message(TOPIC, telemetry(200, T0, 1), T0))] == ["on"]
    assert sink.points("rule_event")[0].tags["kind"] == "reload_error"


def test_valid_edit_takes_effect_and_keeps_unchanged_state(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(120, T0, 1), T0)
    text = (tmp_path / "rules.yaml").read_text().replace("above: 150", "above: 110")
    pubs = svc.reload_text(text, T0 + 1)
    (ev,) = events(pubs, "reload")
    assert ev.data == {"added": [], "changed": ["pm10-gate"], "removed": []}
    assert svc.rules_file.rules[0].above == 110
    pubs = svc.on_message(TOPIC, telemetry(120, T0 + 2, 2), T0 + 2)
    assert [c.action for c in commands(pubs)] == ["on"]
    # a further edit that leaves the rule alone keeps it active (no off, no new on)
    text2 = text.replace("cannon-2: {}", "cannon-2: {litres_per_minute: 20}")
    pubs = svc.reload_text(text2, T0 + 3)
    assert commands(pubs) == []
    assert svc.engine.state("pm10-gate", "site-01").phase == "active"


def test_file_watch_debounces_and_ignores_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("a: 1\n")
    w = FileWatch(path, "a: 1\n")
    assert w.poll() is None
    path.write_text("a: 2\n")
    os.utime(path, ns=(1, 10**18))
    assert w.poll() is None  # first sighting: maybe still being written
    assert w.poll() == "a: 2\n"
    assert w.poll() is None
    os.utime(path, ns=(1, 2 * 10**18))  # touched, same text
    assert w.poll() is None and w.poll() is None
    path.unlink()
    assert w.poll() is None and w.missing


# -------------------------------------------------------------- persistence


def test_state_survives_restart_in_the_middle_of_for(tmp_path: Path) -> None:
    write_rules(tmp_path, for_="60s")
    svc, _ = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(200, T0, 1), T0)
    assert svc.engine.state("pm10-gate", "site-01").phase == "pending"
    svc.save_state(T0 + 10)
    svc2, _ = make_service(tmp_path, now=T0 + 20)
    st2 = svc2.engine.state("pm10-gate", "site-01")
    assert st2.phase == "pending" and st2.since == T0
    # the on-delay runs from T0, not from the restart
    svc2.on_message(TOPIC, telemetry(200, T0 + 50, 2), T0 + 50)
    pubs = svc2.on_message(TOPIC, telemetry(200, T0 + 60, 3), T0 + 60)
    assert [c.action for c in commands(pubs)] == ["on"]


def test_state_file_is_written_only_on_change(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    assert svc.save_state_due(T0) is not None
    assert svc.save_state_due(T0 + 1) is None
    svc.on_message(TOPIC, telemetry(90, T0, 1), T0)  # counters only
    assert svc.save_state_due(T0 + 2) is None
    svc.on_message(TOPIC, telemetry(200, T0 + 3, 2), T0 + 3)  # rule goes active
    data = svc.save_state_due(T0 + 3)
    assert data is not None and json.loads(data)["engine"]["rules"]
    assert svc.save_state_due(T0 + 3 + svc.options.persist_max_age) is not None


def test_an_older_state_file_is_migrated_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that changes the file's version adds a step to MIGRATIONS; a file of
    the version before is brought up through it and the timers resume."""
    write_rules(tmp_path, for_="60s")
    svc, _ = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(200, T0, 1), T0)
    svc.save_state(T0 + 10)  # written as version 1
    seen: list[int] = []

    def to_2(doc: dict) -> dict:
        seen.append(doc["version"])
        return {**doc, "session": {"subscriptions": doc.pop("subscriptions")}}

    monkeypatch.setattr(state, "STATE_VERSION", 2)
    monkeypatch.setattr(state, "MIGRATIONS", {1: to_2})
    doc = state.migrate(json.loads((tmp_path / "state" / STATE_FILE).read_text()))
    assert doc["version"] == 2 and doc["session"]["subscriptions"] == svc.subscriptions()
    svc2, _ = make_service(tmp_path, now=T0 + 20)
    assert seen == [1, 1]
    st2 = svc2.engine.state("pm10-gate", "site-01")
    assert st2.phase == "pending" and st2.since == T0  # resumed, not started fresh
    assert not (tmp_path / "state" / (STATE_FILE + ".bad")).exists()


def test_a_state_file_from_a_newer_release_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "state" / STATE_FILE
    path.parent.mkdir(parents=True)
    text = '{"version": 99, "engine": {"version": 7}}'
    path.write_text(text)
    svc, _ = make_service(tmp_path)
    assert svc.engine.state("pm10-gate", "site-01").phase == "idle"
    assert (path.parent / (STATE_FILE + ".newer")).read_text() == text  # for that release
    assert not path.exists()


def test_corrupt_state_file_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text('{"version": 1, "engine": {"version": 1, "rules": "bogus"}')
    svc, _ = make_service(tmp_path)
    assert svc.engine.state("pm10-gate", "site-01").phase == "idle"
    assert (state.parent / (STATE_FILE + ".bad")).exists()
    assert not state.exists()


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(x.name for x in target.parent.iterdir()) == ["f.json"]


# ---------------------------------------------------------------- overrides


def request(mode: str, ts: float = T0, for_s: float | None = 600, **kw: Any) -> bytes:
    req = OverrideRequest(
        id=kw.pop("id", "ovr-1"), mode=mode, for_s=for_s if mode != "auto" else None,
        who="alice", ts=round(ts * 1000), **kw
    )  # fmt: skip
    return req.model_dump_json(exclude_none=True).encode()


OVR = override_topic("site-01", "cannon-2")


def test_override_on_then_auto(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    pubs = svc.on_message(OVR, request("on"), T0)
    (cmd,) = commands(pubs)
    assert cmd.action == "on" and cmd.source == "override"
    assert next(x for x in pubs if x.topic.endswith("/cmd")).topic == p.cmd_topic(
        "site-01", "cannon-2"
    )
    (ev,) = events(pubs, "override")
    assert ev.data is not None
    assert ev.data["request"] == "ovr-1" and ev.data["who"] == "alice" and ev.data["mode"] == "on"
    assert ev.data["until"] == round((T0 + 600) * 1000)
    # renewed while it lasts
    assert [c.action for c in commands(svc.on_tick(T0 + 11))] == ["on"]
    pubs = svc.on_message(OVR, request("auto", T0 + 20, id="ovr-2"), T0 + 20)
    assert [c.action for c in commands(pubs)] == ["off"]
    assert events(pubs, "override")[0].data["request"] == "ovr-2"  # type: ignore[index]


def test_override_expires_by_itself(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    svc.on_message(OVR, request("on", for_s=30), T0)
    pubs = svc.on_tick(T0 + 31)
    assert [c.action for c in commands(pubs)] == ["off"]
    (ev,) = events(pubs, "override")
    assert ev.data is not None and ev.data["mode"] == "auto"


def test_override_off_blocks_the_rule(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    topic = override_topic("site-01", "cannon-1")
    assert [c.action for c in commands(svc.on_message(topic, request("off"), T0))] == ["off"]
    assert commands(svc.on_message(TOPIC, telemetry(300, T0 + 1, 1), T0 + 1)) == []
    assert commands(svc.on_tick(T0 + 15)) == []


def test_override_refusals(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    unknown = override_topic("site-01", "pump-9")
    pubs = svc.on_message(unknown, request("on"), T0)
    (ev,) = events(pubs, "override_refused")
    assert commands(pubs) == [] and "not declared" in ev.text
    old = svc.on_message(OVR, request("on", ts=T0 - 3600), T0)
    assert commands(old) == [] and events(old, "override_refused")
    # another engine's site: not ours to answer
    assert svc.on_message(override_topic("site-77", "cannon-1"), request("on"), T0) == []
    # on without a duration is not a valid request
    bad = b'{"id": "x", "mode": "on", "who": "bob", "ts": 1}'
    assert svc.on_message(OVR, bad, T0) == [] and svc.counters["decode_errors"] == 1


# ------------------------------------------------------------ subscriptions


def test_subscriptions_per_site(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    assert svc.subscriptions() == [
        "dustgate/v1/site-01/+/telemetry",
        "dustgate/v1/site-01/+/state",
        "dustgate/v1/site-01/gateway/+/status",
        "dustgate/v1/site-01/events",
        "dustgate/v1/site-01/+/override",
    ]
    # our own events are not echoed back (they go to the sink directly)
    assert session.subscribe_options("dustgate/v1/site-01/events").noLocal
    assert not session.subscribe_options("dustgate/v1/site-01/+/telemetry").noLocal


def test_coalesced_readings_are_decided_by_the_next_evaluation(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    # a backlog: readings are stored (and sunk) without evaluating the rules ...
    assert svc.on_message(TOPIC, telemetry(300, T0, 1), T0, evaluate=False) == []
    assert len(sink.points("telemetry")) == 1
    # ... and the evaluation after it decides on everything stored
    assert [c.action for c in commands(svc.on_tick(T0 + 0.01))] == ["on"]


def test_shared_group_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """$share hands out messages, not sites: refused in the file and on the command line."""
    from rules.service.main import main

    path = write_rules(tmp_path)
    assert main(["--config", str(path), "--shared-group", "rules"]) == 2
    err = capsys.readouterr().err
    assert "--shared-group is refused" in err and "messages, not sites" in err
    path.write_text("service: {shared_group: rules}\n" + path.read_text())
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rules.yaml:1:25: service.shared_group:" in err and "partition" in err


def test_cli_refuses_a_bad_partition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rules.service.main import main

    path = write_rules(tmp_path)
    assert main(["--config", str(path), "--partition", "3/3"]) == 2
    assert "--partition: partition index K must be 0..2 for N=3" in capsys.readouterr().err


def test_reload_rebinds_cached_topics_to_the_new_windows(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path, above=900)
    assert svc.on_message(TOPIC, telemetry(200, T0, 1), T0) == []  # the topic is cached now
    other = p.telemetry_topic("site-01", "gate2")
    assert svc.on_message(other, telemetry(200, T0, 1), T0) == []  # no rule reads gate2 yet
    text = (tmp_path / "rules.yaml").read_text()
    extra = """\
  - id: gate-mean
    site: site-01
    metric: pm10
    devices: [gate, gate2]
    combine: all
    aggregate: mean
    window: 5m
    above: 150
    clear: 100
    actions: {lease: [cannon-2]}
"""
    svc.reload_text(text + extra, T0 + 0.5)
    # both devices feed the new 5-minute windows through their cached topics
    assert commands(svc.on_message(TOPIC, telemetry(200, T0 + 1, 2), T0 + 1)) == []  # no gate2
    pubs = svc.on_message(other, telemetry(200, T0 + 1, 2), T0 + 1)
    assert [(c.action, c.rule) for c in commands(pubs)] == [("on", "gate-mean")]


# Operations for the deferral test: a reading of the rule's device or of one nobody
# reads (value, seconds after the previous one: 0 or less is a duplicate or out of
# order, stored during a backlog or evaluated), a tick, an override, a reload with
# another threshold, a snapshot.
_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("reading"),
            st.sampled_from(["gate", "gate", "gate", "nobody"]),
            st.sampled_from([40.0, 120.0, 160.0, 400.0, -5.0]),
            st.sampled_from(["ok", "ok", "ok", "calibrating", "flagged"]),
            st.sampled_from([1.0, 1.0, 2.5, 0.0, -1.0, 45.0]),
            st.booleans(),
        ),
        st.tuples(st.just("tick")),
        st.tuples(st.just("override"), st.sampled_from(["on", "off", "auto"])),
        st.tuples(st.just("reload"), st.sampled_from([150, 300])),
        st.tuples(st.just("snapshot")),
    ),
    max_size=60,
)


def _run_ops(tmp: Path, ops: list[tuple[Any, ...]]) -> dict[str, Any]:
    svc, sink = make_service(tmp)
    svc.outbound.boot = "boot"  # OFF command ids carry the start second: the same in both runs
    text = (tmp / "rules.yaml").read_text()
    out: list[tuple[str, bytes]] = []
    snapshots = []
    now = T0
    seq = 0
    for op in ops:
        now += 0.5
        if op[0] == "reading":
            _, dev, value, status, dt, evaluate = op
            now += dt if dt > 0 else 0.0
            seq += 1
            ts = now if dt > 0 else now - 1.0 + dt  # dt <= 0: at or before an earlier one
            topic = p.telemetry_topic("site-01", dev)
            extra: dict[str, Any] = {}
            if status == "flagged":
                extra["flags"] = {"pm10": "calibrating"}
            elif status != "ok":
                extra["status"] = status
            pubs = svc.on_message(topic, telemetry(value, ts, seq, **extra), now, evaluate)
        elif op[0] == "tick":
            pubs = svc.on_tick(now)
        elif op[0] == "override":
            pubs = svc.on_message(OVR, request(op[1], now, id=f"o-{seq}-{op[1]}"), now)
        elif op[0] == "reload":
            pubs = svc.reload_text(text.replace("above: 150", f"above: {op[1]}"), now)
        else:
            snapshots.append(svc.state_snapshot(now)["engine"])
            pubs = []
        out.extend((x.topic, x.payload) for x in pubs)
    return {
        "publishes": out,
        "snapshots": snapshots,
        "end": svc.state_snapshot(now)["engine"],
        "counters": dict(svc.counters),
        "engine": dict(svc.engine.counters),
        "sink": sink.lines,
    }


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_readings_deferred_in_a_backlog_change_nothing(ops: list[tuple[Any, ...]]) -> None:
    """Readings stored in a batch before the next evaluation (DEFER_MAX) give the same
    commands, events, state, counters and sink lines as storing each one as it comes."""
    import tempfile

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        batched = _run_ops(Path(a), ops)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(service, "DEFER_MAX", 1)  # every reading stored at once
            at_once = _run_ops(Path(b), ops)
    assert batched == at_once


def test_deferred_readings_wait_for_the_next_evaluation(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(300, T0, 1), T0)  # the topic is known from now on
    for k in range(1, 4):
        svc.on_message(TOPIC, telemetry(300, T0 + k, k + 1), T0 + k, evaluate=False)
    svc.on_message(TOPIC, b"{not json", T0 + 4, evaluate=False)
    assert len(svc._deferred) == 4 and len(sink.points("telemetry")) == 1  # held back
    assert svc.counters["messages"] == 5 and svc.counters["decode_errors"] == 0
    assert svc.settle().counters["readings"] == 4  # whatever uses the engine handles them
    assert svc._deferred == [] and len(sink.points("telemetry")) == 4
    assert svc.counters["decode_errors"] == 1


def test_held_back_telemetry_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody evaluating for a long while must not grow the held-back list without end."""

    monkeypatch.setattr(service, "DEFER_MAX", 3)
    svc, sink = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(50, T0, 1), T0)
    for k in range(1, 8):
        svc.on_message(TOPIC, telemetry(50, T0 + k, k + 1), T0 + k, evaluate=False)
        assert len(svc._deferred) == k % 3
    assert len(sink.points("telemetry")) == 7  # the first and two batches of three


def test_any_other_message_comes_after_the_deferred_telemetry(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path)
    svc.on_message(TOPIC, telemetry(50, T0, 1), T0)
    svc.on_message(TOPIC, telemetry(60, T0 + 1, 2), T0 + 1, evaluate=False)
    state = p.encode(p.ActuatorState(state="off", since=p.now_ms(T0), source="rule"))
    svc.on_message(p.state_topic("site-01", "cannon-1"), state, T0 + 2, evaluate=False)
    assert svc._deferred == []
    kinds = [line.split(",")[0] for line in sink.lines]
    assert kinds == ["telemetry", "telemetry", "actuator"]


class _Message:
    """An aiomqtt message as the receive loop reads it: ``topic.value``, ``payload``."""

    def __init__(self, payload: bytes, topic: str = TOPIC) -> None:
        self.topic = type("Topic", (), {"value": topic})()
        self.payload = payload


class _Messages:
    """aiomqtt's ``client.messages`` as the receive loop sees it: waits on the
    client's queue (the inbox's) for the next message; ends when it is empty."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Any:
        if self.queue.empty():
            raise StopAsyncIteration
        return await self.queue.get()


def test_messages_left_queued_when_the_session_ends_are_stored_not_evaluated(
    tmp_path: Path,
) -> None:
    svc, sink = make_service(tmp_path)
    inbox = Inbox()
    queue = inbox.queue_type()(maxsize=0)  # as aiomqtt makes it
    state = p.encode(p.ActuatorState(state="off", since=p.now_ms(T0), source="rule"))
    left = [
        _Message(telemetry(500, T0 + 1, 1)),  # far above the threshold
        _Message(telemetry(510, T0 + 2, 2)),
        _Message(state, p.state_topic("site-01", "cannon-1")),
        _Message(b"{not json"),
    ]
    for m in left:
        queue.put_nowait(m)
    receive.handle_left(svc, inbox)
    assert len(inbox) == 0
    assert svc.counters["handled_after_session"] == 4
    assert svc.settle().counters["readings"] == 2
    assert svc.counters["decode_errors"] == 1
    assert [line.split(",")[0] for line in sink.lines] == ["telemetry", "telemetry", "actuator"]
    assert svc.engine.state("pm10-gate", "site-01").phase == "idle"  # the next tick decides
    receive.handle_left(svc, inbox)  # nothing left: nothing counted twice
    assert svc.counters["handled_after_session"] == 4


async def test_receive_loop_defers_exactly_while_a_backlog_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setattr(receive, "COALESCE_S", 1e9)  # a slow machine must not force one
    svc, _ = make_service(tmp_path)
    inbox = Inbox()
    queue = inbox.queue_type()(maxsize=0)  # as aiomqtt makes its queue
    for k in range(300):
        queue.put_nowait(_Message(telemetry(50, T0 + k, k + 1)))
    delivered = 300
    seen: list[tuple[int, bool]] = []
    orig = svc.on_message

    def on_message(topic: str, payload: bytes, now: float, evaluate: bool = True) -> Any:
        nonlocal delivered
        # what the broker has delivered behind this message, taken by the loop or not
        seen.append((delivered - len(seen) - 1, evaluate))
        if len(seen) == 200:  # more arrive while the loop runs
            for k in range(100):
                queue.put_nowait(_Message(telemetry(50, T0 + 300 + k, 301 + k)))
            delivered += 100
        return orig(topic, payload, now, evaluate)

    svc.on_message = on_message  # type: ignore[method-assign]
    client = type("Client", (), {"messages": _Messages(queue)})()
    await receive.receive(svc, client, inbox)  # type: ignore[arg-type]
    assert len(seen) == 400
    # deferred exactly while 64 or more were queued behind the message (the last
    # of those stored and then evaluated with the first message after them)
    first_live = next(i for i, (queued, _) in enumerate(seen) if queued < 64)
    assert all(not ev for _, ev in seen[:first_live])
    assert all(ev for _, ev in seen[first_live:])
    assert first_live == 400 - 64
    assert svc.settle().counters["readings"] == 400


def test_readings_without_their_interval_are_stored_with_the_status_one(tmp_path: Path) -> None:
    """A gateway from before telemetry carried interval_s: completeness still counts its
    readings, at the interval its retained status publishes."""
    svc, sink = make_service(tmp_path)
    status = p.GatewayStatus(
        state="online",
        ts=round(T0 * 1000),
        devices={
            "gate": p.DeviceHealth(state="online", poll_interval_s=10),
            "odd": p.DeviceHealth(state="online", poll_interval_s=0),
        },
    )
    svc.on_message(TOPIC, telemetry(80, T0, 1), T0)  # before any status: nothing to say
    svc.on_message(p.status_topic("site-01", "gw1"), p.encode(status), T0)
    svc.on_message(TOPIC, telemetry(80, T0 + 1, 2), T0 + 1)
    svc.on_message(TOPIC, telemetry(80, T0 + 2, 3, interval_s=5), T0 + 2)  # its own wins
    odd = p.telemetry_topic("site-01", "odd")
    svc.on_message(odd, telemetry(80, T0 + 3, 1), T0 + 3)
    stored = [(pt.tags["device"], pt.fields.get("interval_s")) for pt in sink.points("telemetry")]
    assert stored == [("gate", None), ("gate", 10.0), ("gate", 5.0), ("odd", None)]
