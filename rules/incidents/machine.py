"""The incident state machine. Pure: no I/O, the clock is an argument.

A *signal* says that one source of a cause at a site is on or off at a time
(rule ``pm10-gate`` is active at ``site-01``; gateway ``gw-01`` is offline).
A cause is on at a site while any of its sources is on. An incident opens
once the cause has been on for the cause's ``open_after``; there is at most
one unresolved incident per (site, cause): further onsets while it is
unresolved update it (``repeats``), they do not open another.

::

    open --acknowledge--> acknowledged --resolve--> resolved
      +------------------------resolve-----------------^

``cleared`` is set (automatically) when the cause goes off and unset when it
comes back; it does not close the incident: a person confirms the fix by
resolving it. After a resolution, a new incident needs a new onset of the
cause (a cause still on when resolved does not reopen at once).

An unresolved incident older than its cause's ``overdue_after`` becomes
overdue once, and is escalated once (a :class:`Notify` of ``level`` 1).

Bad input: a signal older than the last one of its source is ignored
(``out_of_order``), the same state again at the same time too
(``duplicate``); an inspector action naming a version other than the
incident's current one is refused with :class:`Conflict` carrying the
current incident (the second of two inspectors sees the first's action).

Time never runs backwards inside the machine: ``now`` below the latest time
seen is taken as that time, so every incident's timestamps are monotonic,
across restarts too (the clock is part of the persisted state).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Cause = Literal["rule_active", "unsprayed", "gateway_offline", "data_incomplete"]
CAUSES: tuple[Cause, ...] = ("rule_active", "unsprayed", "gateway_offline", "data_incomplete")
CAUSE_TEXT: dict[str, str] = {
    "rule_active": "dust over the limit: a rule is spraying",
    "unsprayed": "dust over the limit and nothing is spraying",
    "gateway_offline": "gateway offline",
    "data_incomplete": "data completeness below the limit",
}
Status = Literal["open", "acknowledged", "resolved"]
NOTE_MAX = 2000
WHO_MAX = 64


@dataclass(frozen=True, slots=True)
class CausePolicy:
    open_after: float = 0.0  # seconds the cause must hold before an incident opens
    overdue_after: float = 1800.0  # seconds from opening to overdue (and escalation)


DEFAULT_POLICIES: dict[str, CausePolicy] = {
    "rule_active": CausePolicy(0.0),  # the engine's own `for` already waited
    "unsprayed": CausePolicy(60.0),
    "gateway_offline": CausePolicy(300.0),
    "data_incomplete": CausePolicy(900.0),
}


@dataclass(frozen=True, slots=True)
class Signal:
    site: str
    cause: str
    source: str  # rule id, gateway id, device id
    on: bool
    ts: float  # seconds; when the source said so
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Note:
    at: float
    who: str
    text: str


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    site: str
    cause: str
    opened_at: float
    cause_since: float
    updated_at: float
    status: Status = "open"
    version: int = 1
    detail: str = ""
    repeats: int = 0
    cleared_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    overdue_at: float | None = None
    notes: tuple[Note, ...] = ()

    @property
    def unresolved(self) -> bool:
        return self.status != "resolved"

    def times(self) -> list[float]:
        """The incident's timestamps in lifecycle order (monotonic by construction)."""
        out = [self.opened_at]
        out += [t for t in (self.acked_at, self.resolved_at) if t is not None]
        return out


@dataclass(frozen=True, slots=True)
class Track:
    """One (site, cause): its sources' last word, and the incident of this onset."""

    sources: tuple[tuple[str, bool, float], ...] = ()  # (source, on, ts), sorted
    since: float | None = None  # when the cause went on (None: off)
    incident: int | None = None  # the unresolved incident of this cause
    handled: bool = False  # an incident was opened during the current onset
    detail: str = ""

    def source(self, name: str) -> tuple[bool, float] | None:
        for s, on, ts in self.sources:
            if s == name:
                return on, ts
        return None

    @property
    def on(self) -> bool:
        return any(on for _, on, _ in self.sources)


@dataclass(frozen=True, slots=True)
class Changed:
    """The incident after a change; ``kind`` says which (opened, repeat, cleared,
    reraised, acknowledged, noted, overdue, resolved)."""

    incident: Incident
    kind: str
    who: str | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the contacts of ``level`` about ``incident`` (0: at once, 1: escalation)."""

    incident: Incident
    level: int
    reason: str


Effect = Changed | Notify


class ActionError(ValueError):
    """An inspector action that cannot be applied (unknown incident, wrong state, bad text)."""


class Conflict(ActionError):
    """The incident changed since the inspector saw it; ``current`` is what it is now."""

    def __init__(self, current: Incident) -> None:
        super().__init__(
            f"incident {current.id} was changed meanwhile (now version {current.version},"
            f" {current.status})"
        )
        self.current = current


@dataclass
class Book:
    """The unresolved incidents and the causes' tracks; resolved ones leave the book
    (the store keeps them). ``dirty_*`` name what changed since the last
    :meth:`take_dirty` (what the store must write)."""

    policies: Mapping[str, CausePolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    clock: float = 0.0
    next_id: int = 1
    incidents: dict[int, Incident] = field(default_factory=dict)
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    dirty_tracks: set[tuple[str, str]] = field(default_factory=set)

    # ---------------------------------------------------------------- time

    def _now(self, now: float) -> float:
        if now < self.clock:
            now = self.clock
        self.clock = now
        return now

    def policy(self, cause: str) -> CausePolicy:
        return self.policies.get(cause) or DEFAULT_POLICIES.get(cause) or CausePolicy()

    def open_incident(self, site: str, cause: str) -> Incident | None:
        t = self.tracks.get((site, cause))
        return None if t is None or t.incident is None else self.incidents.get(t.incident)

    def _set_track(self, key: tuple[str, str], t: Track) -> None:
        self.tracks[key] = t
        self.dirty_tracks.add(key)

    def _put(self, inc: Incident, now: float, **changes: object) -> Incident:
        new = dataclasses.replace(inc, updated_at=now, version=inc.version + 1, **changes)  # type: ignore[arg-type]
        if new.unresolved:
            self.incidents[new.id] = new
        else:
            self.incidents.pop(new.id, None)
        return new

    # ------------------------------------------------------------- signals

    def signal(self, sig: Signal, now: float) -> list[Effect]:
        """Apply one source's word; may open, update or clear an incident."""
        now = self._now(now)
        key = (sig.site, sig.cause)
        t = self.tracks.get(key, Track())
        last = t.source(sig.source)
        if last is not None:
            last_on, last_ts = last
            if sig.ts < last_ts:
                self.counters["out_of_order"] += 1
                return []
            if sig.on == last_on:
                self.counters["duplicate" if sig.ts == last_ts else "repeated"] += 1
                if sig.ts == last_ts:
                    return []
        was_on = t.on
        sources = tuple(
            sorted([s for s in t.sources if s[0] != sig.source] + [(sig.source, sig.on, sig.ts)])
        )
        t = dataclasses.replace(t, sources=sources)
        out: list[Effect] = []
        source_onset = sig.on and (last is None or not last[0])
        if sig.on:
            t = dataclasses.replace(t, detail=sig.detail[:1000] or t.detail)
        inc = self.incidents.get(t.incident) if t.incident is not None else None
        if t.on and not was_on:
            t = dataclasses.replace(t, since=min(sig.ts, now))
            if inc is not None:
                inc = self._put(inc, now, cleared_at=None, repeats=inc.repeats + 1,
                                detail=t.detail)  # fmt: skip
                out.append(Changed(inc, "reraised", text=t.detail))
        elif t.on and source_onset and inc is not None:
            inc = self._put(inc, now, repeats=inc.repeats + 1, detail=t.detail)
            out.append(Changed(inc, "repeat", text=t.detail))
        elif not t.on and was_on:
            t = dataclasses.replace(t, since=None, handled=False)
            if inc is not None:
                inc = self._put(inc, now, cleared_at=now)
                out.append(Changed(inc, "cleared", text=sig.detail))
        self._set_track(key, t)
        out.extend(self._maybe_open(key, now))
        return out

    def _maybe_open(self, key: tuple[str, str], now: float) -> list[Effect]:
        t = self.tracks[key]
        if t.since is None or t.incident is not None or t.handled:
            return []
        if now - t.since < self.policy(key[1]).open_after:
            return []
        inc = Incident(
            id=self.next_id,
            site=key[0],
            cause=key[1],
            opened_at=now,
            cause_since=t.since,
            updated_at=now,
            detail=t.detail,
        )
        self.next_id += 1
        self.incidents[inc.id] = inc
        self._set_track(key, dataclasses.replace(t, incident=inc.id, handled=True))
        return [Changed(inc, "opened", text=t.detail), Notify(inc, 0, "opened")]

    # ---------------------------------------------------------------- tick

    def tick(self, now: float) -> list[Effect]:
        """Timers: causes held long enough open incidents; old ones turn overdue."""
        now = self._now(now)
        out: list[Effect] = []
        for key, t in sorted(self.tracks.items()):
            if t.since is not None and t.incident is None and not t.handled:
                out.extend(self._maybe_open(key, now))
        for _, inc in sorted(self.incidents.items()):
            if (
                inc.overdue_at is None
                and now - inc.opened_at >= self.policy(inc.cause).overdue_after
            ):
                new = self._put(inc, now, overdue_at=now)
                out.append(Changed(new, "overdue"))
                out.append(Notify(new, 1, "overdue"))
        return out

    # ---------------------------------------------------- inspector actions

    def _acting_on(self, incident_id: int, version: int) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise ActionError(f"incident {incident_id} is not open")
        if inc.version != version:
            self.counters["conflict"] += 1
            raise Conflict(inc)
        return inc

    @staticmethod
    def _who(who: str) -> str:
        who = who.strip()
        if not who or len(who) > WHO_MAX:
            raise ActionError(f"who must be 1-{WHO_MAX} characters")
        return who

    def acknowledge(self, incident_id: int, who: str, version: int, now: float) -> list[Effect]:
        who = self._who(who)
        inc = self._acting_on(incident_id, version)
        if inc.status != "open":
            raise ActionError(f"incident {incident_id} is already {inc.status}")
        now = self._now(now)
        new = self._put(inc, now, status="acknowledged", acked_at=now, acked_by=who)
        return [Changed(new, "acknowledged", who=who)]

    def note(self, incident_id: int, who: str, text: str, version: int, now: float) -> list[Effect]:
        who = self._who(who)
        text = text.strip()
        if not text or len(text) > NOTE_MAX:
            raise ActionError(f"a note must be 1-{NOTE_MAX} characters")
        inc = self._acting_on(incident_id, version)
        now = self._now(now)
        new = self._put(inc, now, notes=(*inc.notes, Note(now, who, text)))
        return [Changed(new, "noted", who=who, text=text)]

    def resolve(
        self, incident_id: int, who: str, version: int, now: float, text: str = ""
    ) -> list[Effect]:
        """Resolve (acknowledging on the way if nobody had). A cause still on then
        needs a new onset before another incident opens."""
        who = self._who(who)
        text = text.strip()[:NOTE_MAX]
        inc = self._acting_on(incident_id, version)
        now = self._now(now)
        out: list[Effect] = []
        if inc.acked_at is None:  # acknowledged on the way: the clock shows both steps
            inc = self._put(inc, now, status="acknowledged", acked_at=now, acked_by=who)
            out.append(Changed(inc, "acknowledged", who=who))
        notes = (*inc.notes, Note(now, who, text)) if text else inc.notes
        new = self._put(inc, now, status="resolved", resolved_at=now, resolved_by=who, notes=notes)
        key = (inc.site, inc.cause)
        t = self.tracks.get(key)
        if t is not None and t.incident == inc.id:
            self._set_track(key, dataclasses.replace(t, incident=None))
        out.append(Changed(new, "resolved", who=who, text=text))
        return out

    # ------------------------------------------------------------- restore

    @classmethod
    def restore(
        cls,
        policies: Mapping[str, CausePolicy],
        clock: float,
        next_id: int,
        unresolved: Iterable[Incident],
        tracks: Mapping[tuple[str, str], Track],
    ) -> Book:
        book = cls(policies=dict(policies), clock=clock, next_id=next_id)
        book.incidents = {i.id: i for i in unresolved if i.unresolved}
        book.tracks = dict(tracks)
        return book

    def take_dirty_tracks(self) -> dict[tuple[str, str], Track]:
        out = {k: self.tracks[k] for k in self.dirty_tracks}
        self.dirty_tracks.clear()
        return out
