"""Site partitions (rules.core.partition): a stable slot per site, rules cut to a
partition's sites, and the presence check that keeps two engines off one site."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rulehelpers import rules_file

from gateway.cli import main
from rules.core.partition import (
    Partition,
    Presence,
    conflicts,
    explain,
    missing,
    own_rules,
    parse_partition,
    read_sites,
    rule_sites,
    slot,
)

SITE = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)


def test_slot_is_pinned() -> None:
    """The documented hash: sha256's first 8 bytes, big-endian, mod N. Pinned values,
    so a change of algorithm (which would move every site) cannot pass unnoticed."""
    # from `printf site-NN | sha256sum`: the first 16 hex digits, mod 4
    assert [slot(f"site-{i:02d}", 4) for i in range(8)] == [0, 2, 2, 0, 2, 0, 2, 3]


@given(st.sets(SITE, min_size=1, max_size=60), st.integers(1, 16))
@settings(max_examples=200, deadline=None)
def test_every_site_has_exactly_one_owner(sites: set[str], n: int) -> None:
    owners = {s: [k for k in range(n) if Partition(k, n).owns(s)] for s in sites}
    assert all(len(o) == 1 for o in owners.values())
    table = explain(sites, n)
    assert sorted(s for ss in table.values() for s in ss) == sorted(sites)
    assert all(slot(s, n) == k for k, ss in table.items() for s in ss)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "must look like K/N"),
        ("1/0", "count N must be 1..1024"),
        ("3/3", "index K must be 0..2 for N=3"),
        ("-1/3", "must look like K/N"),
        ("0/2000", "count N must be 1..1024"),
    ],
)
def test_bad_partition_specs_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_partition(text)


def test_parse_partition() -> None:
    assert parse_partition(" 2/5 ") == Partition(2, 5)
    assert str(Partition(2, 5)) == "2/5"


def _city(n_sites: int) -> str:
    acts = "\n".join(f"  site-{i:02d}/cannon: {{}}" for i in range(n_sites))
    rules = "\n".join(
        f"  - {{id: pm10-{i:02d}, site: site-{i:02d}, metric: pm10, devices: [gate], aggregate: mean,"
        f" window: 1m, above: 150, clear: 100,"
        f" relative_to: {{site: site-{(i + 1) % n_sites:02d}, devices: [bg]}},"
        f" actions: {{lease: [cannon]}}}}"
        for i in range(n_sites)
    )
    return f"actuators:\n{acts}\nrules:\n{rules}\n"


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_own_rules_split_the_rule_instances_without_overlap(n: int) -> None:
    rf = rules_file(_city(20))
    parts = [own_rules(rf, Partition(k, n)) for k in range(n)]
    owned = [rule_sites(p) for p in parts]
    assert set().union(*owned) == rule_sites(rf)
    assert sum(len(o) for o in owned) == len(rule_sites(rf))  # disjoint
    for k, p in enumerate(parts):
        assert all(slot(s, n) == k for s in rule_sites(p))
        assert {a.site for a in p.actuator_list} == rule_sites(p)
        # the background of each owned rule is read, even on another partition's site
        for r in p.rules:
            assert r.relative_to is not None and r.relative_to.site in read_sites(p)


def test_one_rule_listing_sites_of_two_partitions_is_cut_in_two() -> None:
    rf = rules_file(
        "rules:\n  - {id: r, site: [site-00, site-01, site-02, site-03], metric: pm10,"
        " devices: [m], above: 150, clear: 100}\n"
    )
    a, b = own_rules(rf, Partition(0, 4)), own_rules(rf, Partition(2, 4))
    # slots of site-00..03 among 4: 0, 2, 2, 0 (test_slot_is_pinned)
    assert [r.site for r in a.rules] == [["site-00", "site-03"]]
    assert [r.site for r in b.rules] == [["site-01", "site-02"]]
    assert own_rules(rf, Partition(1, 4)).rules == []  # no site of this rule in slot 1


def _p(member: str, part: str, online: bool = True) -> Presence:
    return Presence(member=member, partition=part, online=online, since=1)


def test_conflicts() -> None:
    me = Partition(1, 3)
    assert conflicts("e1", me, []) == ("ok", [])
    assert conflicts("e1", me, [_p("e1", "1/3")]) == ("ok", [])  # my own old presence
    assert conflicts("e1", me, [_p("e0", "0/3"), _p("e2", "2/3")]) == ("ok", [])
    assert conflicts("e1", me, [_p("x", "1/3")]) == ("overlap", ["x"])
    assert conflicts("e1", me, [_p("x", "1/3", online=False)]) == ("ok", [])
    assert conflicts("e1", me, [_p("old", "0/2")]) == ("layout", ["old"])
    assert missing(me, [_p("e0", "0/3"), _p("e2", "2/3", online=False)], "e1") == [2]


def test_check_explains_the_partition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(_city(8))
    assert main(["check", str(path), "--explain-partition", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    # slots of site-00..07 among 4: 0 2 2 0 2 0 2 3 (test_slot_is_pinned)
    assert out[1:] == [
        "partition 0/4: 3 site(s): site-00 site-03 site-05",
        "partition 1/4: 0 site(s): -",
        "partition 2/4: 4 site(s): site-01 site-02 site-04 site-06",
        "partition 3/4: 1 site(s): site-07",
    ]
    assert main(["check", str(path), "--explain-partition", "0"]) == 2


def test_a_partitioned_service_reads_backgrounds_but_stores_and_acts_only_for_its_sites(
    tmp_path: Path,
) -> None:
    """Engine 0/4 owns site-00 (slot 0); its rule subtracts a background on site-01
    (slot 2): it subscribes to site-01's telemetry and uses it, but stores only
    site-00's readings and subscribes to nothing else of site-01."""
    from rulehelpers import ListSink

    from gateway import protocol as p
    from rules.core.config import load_rules_file
    from rules.service.notify import Notifier
    from rules.service.service import RulesService, ServiceOptions

    path = tmp_path / "rules.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "actuators: {site-00/cannon: {}, site-01/cannon: {}}\n"
        "rules:\n"
        "  - {id: rel, site: site-00, metric: pm10, devices: [gate], aggregate: last,"
        " window: 1m, above: 100, clear: 50, relative_to: {site: site-01, devices: [bg]},"
        " actions: {lease: [cannon]}}\n"
        "  - {id: other, site: site-01, metric: pm10, devices: [gate], above: 100, clear: 50,"
        " actions: {lease: [cannon]}}\n"
    )
    sink = ListSink()
    svc = RulesService(
        path,
        load_rules_file(path),
        ServiceOptions(client_id="e0", partition=Partition(0, 4)),
        sink=sink,
        notifier=Notifier({}),
        now=1_780_000_000.0,
    )
    assert [r.id for r in svc.rules_file.rules] == ["rel"]
    assert svc.subscriptions() == [
        "dustgate/v1/site-00/+/telemetry",
        "dustgate/v1/site-01/+/telemetry",
        "dustgate/v1/site-00/+/state",
        "dustgate/v1/site-00/gateway/+/status",
        "dustgate/v1/site-00/events",
        "dustgate/v1/site-00/+/override",
        "dustgate/engines/+",
    ]
    t = 1_780_000_000.0

    def reading(site: str, dev: str, v: float, seq: int) -> list[object]:
        msg = p.Telemetry(ts=p.now_ms(t + seq), seq=seq, values={"pm10": v})
        return svc.on_message(p.telemetry_topic(site, dev), p.encode(msg), t + seq)

    def stored() -> list[str]:
        return [line for line in sink.lines if line.startswith("telemetry,")]

    reading("site-01", "bg", 80.0, 1)
    assert stored() == []  # another partition's site: read, not stored
    reading("site-00", "gate", 150.0, 2)  # 150 - 80 = 70: not above 100
    assert len(stored()) == 1 and "site=site-00" in stored()[0]
    # the background drops: 150 - 20 = 130 > 100, decided on the background's reading
    pubs = reading("site-01", "bg", 20.0, 3)
    assert [pub.topic for pub in pubs if pub.topic.endswith("/cmd")] == [  # type: ignore[attr-defined]
        "dustgate/v1/site-00/cannon/cmd"
    ]
    assert len(stored()) == 1
    assert svc.state.path.name == "engine-state.p0-4.json"


def test_state_of_a_moved_site_follows_it_to_its_new_owner(tmp_path: Path) -> None:
    """N changes from 1 to 4: engine 2/4 starts without a state file of its own and
    takes, for its sites, the newest entries of the directory's other state files
    (the old single engine's, an older one's): the active rule and its lease resume."""
    from rules.core.config import load_rules_file
    from rules.service.notify import Notifier
    from rules.service.service import RulesService, ServiceOptions
    from rules.service.state import merge_snapshots

    path = tmp_path / "rules.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + _city(8))
    t = 1_780_000_000.0

    def service(part: Partition, now: float) -> RulesService:
        return RulesService(
            path,
            load_rules_file(path),
            ServiceOptions(client_id=f"e{part}", partition=part),
            notifier=Notifier({}),
            now=now,
        )

    from gateway import protocol as p

    whole = service(Partition(0, 1), t)
    # site-01 (slot 2 of 4) goes active under the single engine
    bg = p.Telemetry(ts=p.now_ms(t + 1), seq=1, values={"pm10": 10.0})
    whole.on_message(p.telemetry_topic("site-02", "bg"), p.encode(bg), t + 1)  # its background
    hot = p.Telemetry(ts=p.now_ms(t + 1), seq=1, values={"pm10": 900.0})
    pubs = whole.on_message(p.telemetry_topic("site-01", "gate"), p.encode(hot), t + 1)
    assert any(pub.topic == "dustgate/v1/site-01/cannon/cmd" for pub in pubs)
    whole.save_state(t + 2)
    assert whole.state.path.name == "engine-state.json"

    part = service(Partition(2, 4), t + 3)
    assert part.state.path.name == "engine-state.p2-4.json"
    assert not part.state.path.exists()
    states = part.settle().states
    assert states[("pm10-01", "site-01")].phase == "active"
    assert all(site in {"site-01", "site-02", "site-04", "site-06"} for _, site in states)

    # newest entry wins, key by key; the command sequence never goes back
    old = {"saved_at": 1, "engine": {"rules": {"a@x": 1, "b@y": 1}, "cmd_seq": 9}}
    new = {"saved_at": 2, "engine": {"rules": {"a@x": 2}, "cmd_seq": 3}}
    merged = merge_snapshots([new, old])
    assert merged["rules"] == {"a@x": 2, "b@y": 1} and merged["cmd_seq"] == 9
