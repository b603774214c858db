"""Notification limits per (notifier, site, rule) with folding: a state machine, so
hypothesis drives it with random alarms and ticks and checks that nothing is lost."""

from __future__ import annotations

import itertools
import re
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.core.evaluator import Notify
from rules.core.notifylimit import NotifyLimiter, hhmm

INTERVALS = {"district": 300.0, "office": 60.0, "nolimit": 0.0}
FOLD = re.compile(r"^(?P<text>.*?)(?: \((?P<more>\d+) more since (?P<since>\d\d:\d\d)\))?$")

notify = st.builds(
    Notify,
    st.sampled_from(sorted(INTERVALS)),
    st.sampled_from(["pm10-gate", "noise"]),
    st.sampled_from(["site-a", "site-b"]),
    st.from_regex(r"[a-z0-9: =.-]{1,20}", fullmatch=True),
    st.sampled_from(["info", "warning", "critical"]),
)
# a step: an alarm after dt seconds, or a tick after dt seconds
steps = st.lists(st.tuples(st.floats(0, 400), st.none() | notify), max_size=60)


def limiter() -> NotifyLimiter:
    return NotifyLimiter(INTERVALS.get)


def run(
    lim: NotifyLimiter, plan: list[tuple[float, Notify | None]], t0: float = 1_780_000_000.0
) -> tuple[list[tuple[float, Notify]], list[tuple[float, Notify]], float]:
    offered: list[tuple[float, Notify]] = []
    sent: list[tuple[float, Notify]] = []
    now = t0
    for dt, n in plan:
        now += dt
        if n is None:
            sent += [(now, m) for m in lim.due(now)]
        else:
            offered.append((now, n))
            out = lim.offer(n, now)
            if out is not None:
                sent.append((now, out))
    return offered, sent, now


@settings(max_examples=200)
@given(steps)
def test_nothing_is_lost_and_each_key_keeps_its_own_interval(plan):
    lim = limiter()
    offered, sent, now = run(lim, plan)
    end = now + max(INTERVALS.values())
    sent += [(end, m) for m in lim.due(end)]
    assert lim.held() == 0 and lim.due(end + 1000) == []
    key = lambda n: (n.notifier, n.site, n.rule)  # noqa: E731
    for k in {key(n) for _, n in offered}:
        mine = [(t, n) for t, n in offered if key(n) == k]
        out = [(t, n) for t, n in sent if key(n) == k]
        # every offered message is delivered, alone or counted in a folded one
        stands_for = 0
        for _, n in out:
            m = FOLD.match(n.text)
            assert m is not None
            stands_for += 1 + int(m["more"] or 0)
        assert stands_for == len(mine), k
        # the first goes out at once; deliveries of one key keep the interval
        assert out[0][0] == mine[0][0]
        times = [t for t, _ in out]
        assert all(b - a >= INTERVALS[k[0]] for a, b in itertools.pairwise(times))
        # the last word arrives: the latest message's text ends the key's deliveries
        assert FOLD.match(out[-1][1].text)["text"] == mine[-1][1].text  # type: ignore[index]


@given(steps, st.integers(0, 60))
def test_a_restart_from_the_snapshot_changes_nothing(plan, cut):
    a, b = limiter(), limiter()
    first, rest = plan[:cut], plan[cut:]
    _, sent_a1, now = run(a, first)
    _, sent_b1, _ = run(b, first)
    b2 = limiter()
    b2.restore(b.to_json())
    _, sent_a2, _ = run(a, rest, now)
    _, sent_b2, _ = run(b2, rest, now)
    assert sent_a1 == sent_b1 and sent_a2 == sent_b2


def test_two_sites_on_one_robot_both_get_through_and_repeats_fold():
    lim = limiter()
    t = datetime(2026, 12, 7, 10, 0).timestamp()

    def alarm(site: str, text: str) -> Notify:
        return Notify("district", "pm10-gate", site, text, "warning")

    assert lim.offer(alarm("site-a", "a: on"), t) is not None
    assert lim.offer(alarm("site-b", "b: on"), t + 60) is not None  # another site: its own turn
    assert lim.offer(alarm("site-a", "a: off"), t + 120) is None
    assert lim.offer(alarm("site-a", "a: on"), t + 180) is None
    assert lim.offer(alarm("site-a", "a: off"), t + 240) is None
    assert lim.held() == 3
    assert lim.due(t + 299) == []
    [flushed] = lim.due(t + 300)  # the interval ran out with nothing new: the latest, folded
    assert flushed.site == "site-a"
    assert flushed.text == f"a: off (2 more since {hhmm(t + 120)})"
    assert lim.offer(alarm("site-a", "a: on"), t + 400) is None  # a new window began at 300
    [nxt] = lim.due(t + 600)
    assert nxt.text == "a: on"


def test_folded_into_the_next_message_with_the_worst_severity():
    lim = limiter()
    t = 1_780_000_000.0
    lim.offer(Notify("office", "r", "s", "on", "warning"), t)
    lim.offer(Notify("office", "r", "s", "max_on", "critical"), t + 10)
    lim.offer(Notify("office", "r", "s", "off", "info"), t + 20)
    out = lim.offer(Notify("office", "r", "s", "on again", "warning"), t + 60)
    assert out is not None and out.severity == "critical"
    assert out.text == f"on again (2 more since {hhmm(t + 10)})"
