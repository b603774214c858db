"""The replay's input read ahead in a forked process (rules.history.readahead): the same
readings and counters as in-process, input errors and crashes carried over, a
dead or abandoned child never left behind."""

from __future__ import annotations

import io
import math
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay import RULES, T0  # one pm10 rule (last 1 min > 150) with a wind interlock

from rules.core.config import load_rules_file
from rules.history import readahead
from rules.history.readahead import ReadAhead, can_read_ahead, read_ahead
from rules.history.replay import main, read_csv, replay
from rules.history.sources import Reading, ReplayError


@pytest.fixture(autouse=True)
def single_threaded() -> None:
    """Forking needs a single-threaded process (rules.history.readahead.can_read_ahead); a
    thread an earlier test left behind gets a few seconds to end."""
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join(timeout=5)
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    assert not others, f"an earlier test left threads running: {others}"
    assert can_read_ahead()


def readings(n: int, counters: Counter[str] | None = None) -> Iterator[Reading]:
    for i in range(n):
        if counters is not None and i % 7 == 0:
            counters["bad_rows"] += 1
        flags = {"pm10": "fault"} if i % 11 == 0 else None
        yield 1000.0 + i, "site-01", f"m{i % 3}", {"pm10": i * 0.1, "pm25": -i}, "ok", flags


def gone(pid: int) -> bool:
    """True when ``pid`` is no child of ours any more (reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_same_readings_and_counters_as_in_process() -> None:
    want_counts: Counter[str] = Counter()
    want = list(readings(2000, want_counts))
    counts: Counter[str] = Counter({"bad_rows": 5})  # counted before the fork: kept
    ahead = read_ahead(readings(2000, counts), counts)
    assert isinstance(ahead, ReadAhead)
    pid = ahead.pid
    assert pid is not None and pid != os.getpid()
    assert list(ahead) == want
    assert counts == Counter({"bad_rows": 5 + want_counts["bad_rows"]})
    assert ahead.pid is None and gone(pid)


reading_st = st.tuples(
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.text(max_size=8),
    st.dictionaries(st.text(max_size=6), st.floats(allow_nan=False), max_size=4),
    st.text(max_size=5),
    st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(reading_st, max_size=1500))
def test_any_readings_come_through_unchanged(rows: list[Reading]) -> None:
    assert list(read_ahead(iter(rows))) == rows


def test_nan_and_infinities_come_through() -> None:
    (got,) = list(read_ahead(iter([(1.0, "s", "d", {"a": math.nan, "b": -math.inf}, "ok", None)])))
    assert math.isnan(got[3]["a"]) and got[3]["b"] == -math.inf


def test_an_input_error_is_raised_after_the_readings_before_it() -> None:
    def failing() -> Iterator[Reading]:
        yield from readings(1300)
        raise ReplayError("row 1301: timestamp 'soon' is neither ms since the epoch nor ISO 8601")

    ahead = read_ahead(failing())
    got: list[Reading] = []
    with pytest.raises(ReplayError, match="row 1301: timestamp 'soon'"):
        for r in ahead:
            got.append(r)
    assert got == list(readings(1300))
    assert isinstance(ahead, ReadAhead) and ahead.pid is None


def test_a_bug_in_the_reader_is_not_reported_as_bad_input() -> None:
    def buggy() -> Iterator[Reading]:
        yield from readings(10)
        raise TypeError("unsupported operand")

    with pytest.raises(RuntimeError, match=r"(?s)input reader process failed.*TypeError"):
        list(read_ahead(buggy()))


def test_a_killed_reader_is_an_error_not_a_short_replay() -> None:
    def dies() -> Iterator[Reading]:
        yield from readings(3000)
        os.kill(os.getpid(), signal.SIGKILL)  # runs in the child: it is the child that dies
        yield from readings(10)

    ahead = read_ahead(dies())
    with pytest.raises(ReplayError, match="ended early \\(killed by signal 9\\)"):
        list(ahead)
    assert isinstance(ahead, ReadAhead) and ahead.pid is None


def test_stopping_early_kills_and_reaps_the_reader() -> None:
    ahead = read_ahead(readings(10**9))  # would run for hours
    assert isinstance(ahead, ReadAhead)
    pid = ahead.pid
    assert pid is not None
    it = iter(ahead)
    assert [next(it) for _ in range(5)] == list(readings(5))
    ahead.close()
    assert ahead.pid is None and gone(pid)


def test_a_replay_stopped_by_an_error_takes_the_reader_with_it(tmp_path: Path) -> None:
    rf = load_rules_file("r.yaml", text=RULES)
    text = "ts,site,device,pm10,wind_speed\n" + "".join(
        f"{(T0 + s) * 1000},site-01,m,50,2\n" for s in range(200000)
    )
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    class Boom(Exception):
        pass

    def fail(*a: object) -> None:
        raise Boom

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fork", fork)
        # the engine fails at its first tick (a stand-in for any error in the parent)
        mp.setattr("rules.core.engine.Engine.tick", fail)
        with pytest.raises(Boom):
            replay(read_csv(io.StringIO(text)), [rf], ahead=True)
    assert len(pids) == 1 and gone(pids[0])


def test_with_another_thread_running_the_input_is_read_in_process() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        src = iter(list(readings(3)))
        assert not can_read_ahead()
        assert read_ahead(src) is src
    finally:
        stop.set()
        t.join()


def test_cli_reports_an_input_error_met_by_the_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    good = "".join(
        f"{(T0 + s) * 1000},site-01,m,{200 if s < 120 else 50},2\n" for s in range(20000)
    )
    data = tmp_path / "data.csv"
    # an invalid UTF-8 byte far enough in for the reader process to meet it
    data.write_bytes(b"ts,site,device,pm10,wind_speed\n" + good.encode() + b"\xff,site-01,m,1,2\n")
    assert main([str(tmp_path / "r.yaml"), "--csv", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("replay: 'utf-8' codec can't decode byte 0xff"), err
    data.write_bytes(b"ts,site,device,pm10,wind_speed\n" + good.encode())
    assert main([str(tmp_path / "r.yaml"), "--csv", str(data), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "r.yaml,pm10,1,2.0,20.0,2.0,2.0,0.0"


def test_batches_split_anywhere_give_the_same_replay() -> None:
    rf = load_rules_file("r.yaml", text=RULES)
    text = "ts,site,device,pm10,wind_speed\n" + "".join(
        f"{(T0 + s) * 1000},site-01,m,{200 if 60 <= s < 180 else 50},2\n" for s in range(700)
    )
    results = []
    for batch in (1, 7, readahead.BATCH):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(readahead, "BATCH", batch)
            (res,) = replay(read_csv(io.StringIO(text)), [rf], ahead=True)
        results.append((res.rules, res.counters, res.first_ts, res.last_ts, res.readings))
    (plain,) = replay(read_csv(io.StringIO(text)), [rf])
    assert results == [(plain.rules, plain.counters, plain.first_ts, plain.last_ts, 700)] * 3
    assert plain.rules["pm10"].triggers == 1
