"""The incident state machine: lifecycle, repeats, clearing, overdue, bad input."""

from __future__ import annotations

import pytest

from rules.incidents.machine import (
    ActionError,
    Book,
    CausePolicy,
    Changed,
    Conflict,
    Notify,
    Signal,
)

POLICIES = {
    "rule_active": CausePolicy(open_after=0, overdue_after=1800),
    "gateway_offline": CausePolicy(open_after=300, overdue_after=600),
}


def on(source: str, ts: float, cause: str = "rule_active", site: str = "site-01") -> Signal:
    return Signal(site, cause, source, True, ts, f"{source} on")


def off(source: str, ts: float, cause: str = "rule_active", site: str = "site-01") -> Signal:
    return Signal(site, cause, source, False, ts, f"{source} off")


def kinds(effects: list[Changed | Notify]) -> list[str]:
    return [e.kind if isinstance(e, Changed) else f"notify{e.level}" for e in effects]


def test_rule_active_opens_at_once_and_notifies_level_0() -> None:
    book = Book(POLICIES)
    fx = book.signal(on("pm10-gate", 100.0), now=100.5)
    assert kinds(fx) == ["opened", "notify0"]
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None and inc.status == "open"
    assert inc.opened_at == 100.5 and inc.cause_since == 100.0
    assert inc.detail == "pm10-gate on"


def test_repeats_update_the_one_open_incident() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 10), 10)
    assert kinds(book.signal(on("r2", 20), 20)) == ["repeat"]  # a second rule at the site
    assert kinds(book.signal(off("r1", 30), 30)) == []  # r2 still on
    assert kinds(book.signal(off("r2", 40), 40)) == ["cleared"]
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None and inc.cleared_at == 40 and inc.status == "open"
    assert kinds(book.signal(on("r1", 50), 50)) == ["reraised"]
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None and inc.cleared_at is None and inc.repeats == 2
    assert len(book.incidents) == 1


def test_open_after_waits_for_the_cause_to_hold() -> None:
    book = Book(POLICIES)
    assert book.signal(on("gw-01", 0, "gateway_offline"), 0) == []
    assert book.tick(299) == []
    assert kinds(book.tick(300)) == ["opened", "notify0"]


def test_a_short_outage_opens_nothing() -> None:
    book = Book(POLICIES)
    book.signal(on("gw-01", 0, "gateway_offline"), 0)
    book.signal(off("gw-01", 100, "gateway_offline"), 100)
    assert book.tick(1000) == []
    assert book.incidents == {}


def test_lifecycle_with_who_and_when() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    (ack,) = book.acknowledge(inc.id, "li.wei", inc.version, 60)
    assert isinstance(ack, Changed) and ack.incident.status == "acknowledged"
    assert ack.incident.acked_by == "li.wei" and ack.incident.acked_at == 60
    (noted,) = book.note(inc.id, "li.wei", "<b>hose</b> fixed", ack.incident.version, 70)
    assert isinstance(noted, Changed)
    assert noted.incident.notes[-1].text == "<b>hose</b> fixed"  # stored as typed; pages escape
    (res,) = book.resolve(inc.id, "zhang.min", noted.incident.version, 120)  # acked before
    assert isinstance(res, Changed)
    assert res.incident.status == "resolved" and res.incident.resolved_by == "zhang.min"
    assert res.incident.times() == [0, 60, 120]
    assert book.incidents == {}


def test_resolving_while_the_cause_holds_waits_for_a_new_onset() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    book.resolve(inc.id, "li.wei", inc.version, 10)
    assert book.tick(20) == []  # still on: no new incident for the same onset
    assert kinds(book.signal(on("r2", 30), 30)) == []
    book.signal(off("r1", 40), 40)
    book.signal(off("r2", 41), 41)
    assert kinds(book.signal(on("r1", 50), 50)) == ["opened", "notify0"]
    new = book.open_incident("site-01", "rule_active")
    assert new is not None and new.id == inc.id + 1


def test_resolve_without_ack_counts_as_acknowledged_then() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    ack, res = book.resolve(inc.id, "li.wei", inc.version, 30, text="sprayed by hand")
    assert isinstance(ack, Changed) and isinstance(res, Changed)
    assert (ack.kind, res.kind) == ("acknowledged", "resolved")
    assert res.incident.acked_at == 30 and res.incident.acked_by == "li.wei"
    assert res.incident.notes[-1].text == "sprayed by hand"


def test_overdue_escalates_exactly_once() -> None:
    book = Book(POLICIES)
    book.signal(on("gw-01", 0, "gateway_offline"), 0)
    book.tick(300)  # opens
    assert book.tick(899) == []
    fx = book.tick(900)
    assert kinds(fx) == ["overdue", "notify1"]
    assert book.tick(901) == [] and book.tick(5000) == []
    inc = book.open_incident("site-01", "gateway_offline")
    assert inc is not None and inc.overdue_at == 900


def test_acknowledged_still_turns_overdue_resolved_never() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    book.acknowledge(inc.id, "a", inc.version, 10)
    assert kinds(book.tick(1800)) == ["overdue", "notify1"]
    book.signal(on("r1", 0, site="site-02"), 1801)
    inc2 = book.open_incident("site-02", "rule_active")
    assert inc2 is not None
    book.resolve(inc2.id, "a", inc2.version, 1802)
    assert book.tick(10_000) == []


def test_second_inspector_sees_the_first_action() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    seen = inc.version  # both inspectors loaded the page at this version
    book.acknowledge(inc.id, "first", seen, 10)
    with pytest.raises(Conflict) as err:
        book.resolve(inc.id, "second", seen, 11)
    assert err.value.current.acked_by == "first"
    assert book.counters["conflict"] == 1


def test_duplicate_and_out_of_order_signals() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 10), 10)
    assert book.signal(on("r1", 10), 11) == []  # the same event twice
    assert book.counters["duplicate"] == 1
    assert book.signal(off("r1", 5), 12) == []  # older than what we know
    assert book.counters["out_of_order"] == 1
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None and inc.cleared_at is None and inc.version == 1


def test_the_clock_never_runs_backwards() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 100)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    (ack,) = book.acknowledge(inc.id, "a", inc.version, 50)  # a wall clock stepped back
    assert isinstance(ack, Changed) and ack.incident.acked_at == 100


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda b, i: b.acknowledge(999, "a", 1, 1), "not open"),
        (lambda b, i: b.acknowledge(i.id, "", i.version, 1), "who"),
        (lambda b, i: b.note(i.id, "a", "   ", i.version, 1), "note"),
        (lambda b, i: b.note(i.id, "a", "x" * 2001, i.version, 1), "note"),
    ],
)
def test_bad_actions_are_refused_with_a_reason(action: object, message: str) -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    with pytest.raises(ActionError, match=message):
        action(book, inc)  # type: ignore[operator]


def test_acknowledging_twice_is_refused() -> None:
    book = Book(POLICIES)
    book.signal(on("r1", 0), 0)
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None
    (ack,) = book.acknowledge(inc.id, "a", inc.version, 1)
    assert isinstance(ack, Changed)
    with pytest.raises(ActionError, match="already acknowledged"):
        book.acknowledge(inc.id, "b", ack.incident.version, 2)
