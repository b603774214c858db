"""Hypothesis: any sequence of engine signals, ticks, inspector actions and restarts.

For every sequence: at most one unresolved incident per (site, cause); every
incident's timestamps are monotonic and never move once set; every incident
is resolved or open; and a restart taken at any point (the book rebuilt from
the SQLite store) loses or duplicates nothing: the restored machine goes on
exactly as the one that never stopped.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.incidents.machine import (
    ActionError,
    Book,
    CausePolicy,
    Changed,
    Effect,
    Incident,
    Notify,
    Signal,
)
from rules.incidents.store import IncidentStore

POLICIES = {
    "rule_active": CausePolicy(open_after=0, overdue_after=50),
    "gateway_offline": CausePolicy(open_after=20, overdue_after=40),
}
SITES = ("s1", "s2")
CAUSES = ("rule_active", "gateway_offline")
SOURCES = ("a", "b")

step = st.one_of(
    st.tuples(
        st.just("signal"),
        st.sampled_from(SITES),
        st.sampled_from(CAUSES),
        st.sampled_from(SOURCES),
        st.booleans(),
        st.integers(-30, 30),  # event ts relative to now: late and early events
    ),
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("act"),
        st.sampled_from(("acknowledge", "note", "resolve")),
        st.integers(0, 3),  # which unresolved incident (modulo)
        st.booleans(),  # act on a stale version (a second inspector)
    ),
    st.tuples(st.just("restart")),
)
steps = st.lists(st.tuples(step, st.integers(0, 25)), max_size=60)


def apply(book: Book, s: tuple[object, ...], now: float) -> list[Effect]:
    kind = s[0]
    if kind == "signal":
        _, site, cause, source, is_on, dt = s
        return book.signal(
            Signal(str(site), str(cause), str(source), bool(is_on), max(0.0, now + float(dt))),  # type: ignore[arg-type]
            now,
        )
    if kind == "tick":
        return book.tick(now)
    if kind == "act":
        _, what, pick, stale = s
        open_ids = sorted(book.incidents)
        if not open_ids:
            return []
        inc = book.incidents[open_ids[int(pick) % len(open_ids)]]  # type: ignore[call-overload]
        version = inc.version - 1 if stale else inc.version
        try:
            if what == "acknowledge":
                return book.acknowledge(inc.id, "insp", version, now)
            if what == "note":
                return book.note(inc.id, "insp", "<i>n</i>", version, now)
            return book.resolve(inc.id, "insp", version, now)
        except ActionError:
            return []
    return []


def check(history: dict[int, list[Incident]], book: Book) -> None:
    latest = {i: versions[-1] for i, versions in history.items()}
    unresolved = [inc for inc in latest.values() if inc.unresolved]
    keys = [(i.site, i.cause) for i in unresolved]
    assert len(keys) == len(set(keys)), "two unresolved incidents for one (site, cause)"
    assert {i.id for i in unresolved} == set(book.incidents)
    for versions in history.values():
        for a, b in itertools.pairwise(versions):
            assert b.version == a.version + 1
            assert b.updated_at >= a.updated_at
            for attr in ("opened_at", "acked_at", "resolved_at", "overdue_at"):
                if getattr(a, attr) is not None:
                    assert getattr(b, attr) == getattr(a, attr), f"{attr} moved"
            assert a.status != "resolved", "a resolved incident changed again"
        last = versions[-1]
        assert last.status in ("open", "acknowledged", "resolved")
        assert last.times() == sorted(last.times())
        assert last.cause_since <= last.opened_at


def notify_counts(effects: list[Effect]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for e in effects:
        if isinstance(e, Notify):
            k = (e.incident.id, e.level)
            out[k] = out.get(k, 0) + 1
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=steps)
def test_any_sequence_keeps_the_invariants_across_restarts(tmp_path: Path, seq: list) -> None:  # type: ignore[type-arg]
    db = tmp_path / f"incidents-{abs(hash(str(seq)))}.db"
    db.unlink(missing_ok=True)
    store = IncidentStore(db)
    book = store.load_book(POLICIES)
    twin = Book(dict(POLICIES))  # never restarts
    history: dict[int, list[Incident]] = {}
    effects: list[Effect] = []
    now = 0.0
    try:
        for s, dt in seq:
            now += dt
            if s[0] == "restart":
                store.close()
                store = IncidentStore(db)
                book = store.load_book(POLICIES)
                assert book.clock == twin.clock
                assert book.incidents == twin.incidents
                assert book.tracks == twin.tracks
                assert book.next_id == twin.next_id
                continue
            fx = apply(book, s, now)
            assert fx == apply(twin, s, now), "the restored machine went another way"
            store.commit(book, [e for e in fx if isinstance(e, Changed)])
            effects += fx
            for e in fx:
                if isinstance(e, Changed):
                    history.setdefault(e.incident.id, []).append(e.incident)
            check(history, book)
        # nothing lost or duplicated on disk
        stored = {i.id: i for i in store.incidents(limit=10_000)}
        assert stored == {i: v[-1] for i, v in history.items()}
        # each incident notified once at level 0, escalated at most once
        counts = notify_counts(effects)
        assert all(n == 1 for n in counts.values())
        assert {i for i, lvl in counts if lvl == 0} == set(history)
    finally:
        store.close()


# ------------------------------------------- engine events end to end, as the service runs

engine_step = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(SITES),
        st.sampled_from(
            ("on", "off", "interlock", "held_back", "held_back_end", "pending", "stale", "reload")
        ),
        st.sampled_from(("pm10-gate", "noise")),
        st.integers(-5, 5),  # late and early events (duplicates when repeated)
    ),
    st.tuples(st.just("status"), st.sampled_from(SITES), st.booleans(), st.integers(-5, 5)),
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("act"),
        st.sampled_from(("acknowledge", "note", "resolve")),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.tuples(st.just("restart")),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=st.lists(st.tuples(engine_step, st.integers(0, 25)), max_size=50))
def test_engine_events_and_inspectors_through_the_service(tmp_path: Path, seq: list) -> None:  # type: ignore[type-arg]
    """The issue's property as the service sees it: engine events and gateway status
    (through the Deriver, whose memory a restart loses as the process would), inspector
    actions, ticks, restarts that rebuild everything from SQLite: at most one unresolved
    incident per (site, cause), timestamps monotonic, every incident open or resolved,
    the store holding exactly the incidents made, never one twice."""
    from gateway.protocol import Event, GatewayStatus
    from rules.incidents.signals import Deriver

    db = tmp_path / f"svc-{abs(hash(str(seq)))}.db"
    db.unlink(missing_ok=True)
    store = IncidentStore(db)
    book = store.load_book(POLICIES)
    deriver = Deriver()
    history: dict[int, list[Incident]] = {}
    now = 1_000.0
    try:
        for s, dt in seq:
            now += dt
            if s[0] == "restart":
                store.close()
                store = IncidentStore(db)
                book = store.load_book(POLICIES)
                deriver = Deriver()
                continue
            if s[0] == "event":
                _, site, kind, rule, skew = s
                ev = Event(ts=int((now + skew) * 1000), kind=kind, text=f"{rule} {kind}",
                           rule=None if kind == "reload" else rule,
                           data={"changed": [rule]} if kind == "reload" else {"value": 200.0})  # fmt: skip
                sigs = deriver.event(str(site), ev)
            elif s[0] == "status":
                _, site, online, skew = s
                st_ = GatewayStatus(
                    state="online" if online else "offline", ts=int((now + skew) * 1000)
                )
                sigs = deriver.status(str(site), "gw", st_)
            else:
                sigs = []
            todo: list[Signal | None] = list(sigs) or [None]
            for g in todo:
                fx = book.signal(g, now) if g is not None else apply(book, s, now)
                store.commit(book, [e for e in fx if isinstance(e, Changed)])
                for e in fx:
                    if isinstance(e, Changed):
                        history.setdefault(e.incident.id, []).append(e.incident)
                check(history, book)
        stored = {i.id: i for i in store.incidents(limit=10_000)}
        assert stored == {i: v[-1] for i, v in history.items()}
    finally:
        store.close()
