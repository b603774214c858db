"""Outbox: committed before published, in order, bounded, and crash-safe."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.outbox import Outbox, OutboxError, Row

T0 = 1_790_000_000.0  # wall-clock seconds
HOUR = 3600.0


def ms(t: float) -> int:
    return int(t * 1000)


def make(path: Path, **kw: object) -> Outbox:
    args: dict[str, object] = {"max_rows": 1000, "max_age_s": 7 * 86400.0}
    args.update(kw)
    return Outbox(path / "outbox.db", **args)  # type: ignore[arg-type]


def put(ob: Outbox, key: str, n: int, now: float, ts: float | None = None) -> int:
    return ob.put(key, f"dustgate/v1/s/{key}/telemetry", f"{key}#{n}".encode(), ms(ts or now), now)


def test_row_is_publishable_only_after_commit(tmp_path: Path) -> None:
    ob = make(tmp_path, commit_interval_s=1.0)
    ob.commit(T0)
    rid = put(ob, "pm1", 0, T0 + 0.1)
    assert ob.pending_for_publish(10) == []  # buffered, not committed
    assert ob.stats().backlog == 1 and ob.stats().committed == 0
    assert not ob.maybe_commit(T0 + 0.5)  # interval not over
    assert ob.commits == 1
    assert ob.maybe_commit(T0 + 1.0)
    assert ob.commits == 2
    rows = ob.pending_for_publish(10)
    assert rows == [Row(rid, "pm1", "dustgate/v1/s/pm1/telemetry", b"pm1#0", ms(T0 + 0.1))]


def test_put_commits_when_the_interval_passed_or_the_batch_is_full(tmp_path: Path) -> None:
    ob = make(tmp_path, commit_interval_s=10.0, max_batch=3)
    ob.commit(T0)
    put(ob, "a", 0, T0 + 1)
    put(ob, "a", 1, T0 + 2)
    assert ob.stats().committed == 0
    put(ob, "a", 2, T0 + 3)  # third row fills the batch
    assert ob.stats().committed == 3
    put(ob, "a", 3, T0 + 13)  # 10 s since the last commit
    assert ob.stats().committed == 4


def test_clock_stepping_back_does_not_stall_commits(tmp_path: Path) -> None:
    ob = make(tmp_path, commit_interval_s=10.0)
    ob.commit(T0)
    put(ob, "a", 0, T0 - HOUR)  # NTP stepped the clock back an hour
    assert ob.stats().committed == 1


def test_oldest_first_across_keys_and_in_flight_rows_are_not_repeated(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ids = [put(ob, k, i, T0 + i) for i in range(3) for k in ("b", "a")]
    ob.commit(T0 + 5)
    first = ob.pending_for_publish(4)
    assert [r.id for r in first] == ids[:4]
    assert [r.payload for r in first] == [b"b#0", b"a#0", b"b#1", b"a#1"]
    second = ob.pending_for_publish(10)
    assert [r.id for r in second] == ids[4:]
    assert ob.pending_for_publish(10) == []
    assert ob.stats().inflight == 6


def test_requeue_hands_unacked_rows_out_again_before_newer_ones(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ids = [put(ob, "a", i, T0) for i in range(4)]
    ob.commit(T0)
    ob.pending_for_publish(10)
    ob.ack_many([ids[0], ids[2]])
    new = put(ob, "a", 4, T0 + 2)
    ob.commit(T0 + 2)
    assert ob.requeue_inflight() == 2
    assert [r.id for r in ob.pending_for_publish(10)] == [ids[1], ids[3], new]


def test_ack_after_requeue_is_honoured_and_not_handed_out_again(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ids = [put(ob, "a", i, T0) for i in range(3)]
    ob.commit(T0)
    ob.pending_for_publish(10)
    ob.requeue_inflight()
    ob.ack(ids[1])  # a late PUBACK for a requeued row
    assert [r.id for r in ob.pending_for_publish(10)] == [ids[0], ids[2]]
    assert ob.stats().backlog == 2


def test_acked_rows_are_deleted_at_commit_and_stay_deleted(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ids = [put(ob, "a", i, T0) for i in range(5)]
    ob.commit(T0)
    ob.pending_for_publish(10)
    ob.ack_many(ids[:3])
    ob.ack(10_000)  # unknown id: ignored
    assert ob.stats().backlog == 2
    ob.commit(T0 + 1)
    ob.close()
    ob = make(tmp_path)
    assert [r.id for r in ob.pending_for_publish(10)] == ids[3:]


def test_ack_lost_in_a_crash_republishes_the_row(tmp_path: Path) -> None:
    ob = make(tmp_path)
    rid = put(ob, "a", 0, T0)
    ob.commit(T0)
    ob.pending_for_publish(1)
    ob.ack(rid)
    ob.close(commit=False)  # crash before the delete was committed
    ob = make(tmp_path)
    assert [r.id for r in ob.pending_for_publish(10)] == [rid]  # at least once


def test_uncommitted_rows_are_lost_in_a_crash_but_committed_ones_are_not(tmp_path: Path) -> None:
    ob = make(tmp_path)
    kept = put(ob, "a", 0, T0)
    ob.commit(T0)
    put(ob, "a", 1, T0 + 0.2)
    ob.close(commit=False)
    ob = make(tmp_path)
    assert [r.id for r in ob.pending_for_publish(10)] == [kept]


def test_seq_survives_restart_and_is_never_reissued_for_committed_rows(tmp_path: Path) -> None:
    ob = make(tmp_path)
    assert [ob.next_seq("a") for _ in range(3)] == [0, 1, 2]
    assert ob.next_seq("b") == 0
    ob.commit(T0)
    ob.close()
    ob = make(tmp_path)
    assert ob.next_seq("a") == 3
    assert ob.next_seq("b") == 1
    ob.commit(T0)
    ob.next_seq("a")  # 4, never committed
    ob.close(commit=False)
    ob = make(tmp_path)
    assert ob.next_seq("a") == 4  # issued to a reading nobody saw


def test_row_ids_are_not_reused_after_everything_was_acked(tmp_path: Path) -> None:
    ob = make(tmp_path)
    rid = put(ob, "a", 0, T0)
    ob.commit(T0)
    ob.pending_for_publish(1)
    ob.ack(rid)
    ob.commit(T0 + 1)
    ob.close()
    ob = make(tmp_path)
    assert put(ob, "a", 1, T0 + 2) > rid


def test_max_rows_evicts_oldest_and_counts_persistently(tmp_path: Path) -> None:
    ob = make(tmp_path, max_rows=5)
    ids = [put(ob, k, i, T0) for i in range(4) for k in ("a", "b")]
    ob.commit(T0)
    st = ob.stats()
    assert (st.backlog, st.committed, st.evicted) == (5, 5, 3)
    assert [r.id for r in ob.pending_for_publish(10)] == ids[3:]
    ob.close()
    ob = make(tmp_path, max_rows=5)
    assert ob.stats().evicted == 3


def test_evicted_inflight_rows_are_forgotten(tmp_path: Path) -> None:
    ob = make(tmp_path, max_rows=3)
    ids = [put(ob, "a", i, T0) for i in range(3)]
    ob.commit(T0)
    ob.pending_for_publish(10)
    for i in range(3, 5):
        put(ob, "a", i, T0)
    ob.commit(T0 + 1)
    assert ob.stats().inflight == 1  # ids[0], ids[1] evicted
    ob.ack(ids[0])  # a PUBACK for an evicted row changes nothing
    assert ob.stats().backlog == 3 and ob.stats().evicted == 2


def test_evicted_requeued_rows_are_forgotten(tmp_path: Path) -> None:
    ob = make(tmp_path, max_rows=2)
    ids = [put(ob, "a", i, T0) for i in range(2)]
    ob.commit(T0)
    ob.pending_for_publish(10)
    ob.requeue_inflight()  # reconnect: both rows will be handed out again
    for i in range(2, 4):
        put(ob, "a", i, T0)
    ob.commit(T0 + 1)  # ...but they are evicted first
    ob.ack_many(ids)  # late PUBACKs for evicted rows change nothing
    st = ob.stats()
    assert (st.backlog, st.committed, st.evicted) == (2, 2, 2)
    assert [r.payload for r in ob.pending_for_publish(10)] == [b"a#2", b"a#3"]


def test_max_age_evicts_the_stale_head(tmp_path: Path) -> None:
    ob = make(tmp_path, max_age_s=HOUR)
    old = [put(ob, "a", i, T0, ts=T0 - 2 * HOUR + i) for i in range(3)]
    young = put(ob, "a", 3, T0, ts=T0 - 10)
    stale_behind = put(ob, "b", 0, T0, ts=T0 - 3 * HOUR)
    ob.commit(T0)
    assert ob.stats().evicted == 3
    # a stale row behind a young one waits for its turn at the head
    assert [r.id for r in ob.pending_for_publish(10)] == [young, stale_behind]
    assert old[0] < young


def test_age_eviction_runs_on_an_idle_outbox(tmp_path: Path) -> None:
    ob = make(tmp_path, max_age_s=HOUR, commit_interval_s=1.0)
    put(ob, "a", 0, T0)
    ob.commit(T0)
    assert ob.maybe_commit(T0 + 2 * HOUR)  # no new rows, but the head is stale
    assert ob.stats().evicted == 1 and ob.stats().backlog == 0


def test_stats_and_disk_size(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for i in range(10):
        put(ob, "a", i, T0)
    ob.commit(T0)
    put(ob, "a", 10, T0)
    ob.pending_for_publish(4)
    st = ob.stats()
    assert (st.backlog, st.committed, st.inflight, st.evicted) == (11, 10, 4, 0)
    assert st.bytes_on_disk > 0


def test_full_synchronous_mode_and_bad_arguments(tmp_path: Path) -> None:
    ob = make(tmp_path, synchronous="FULL")
    put(ob, "a", 0, T0)
    ob.commit(T0)
    assert ob.stats().committed == 1
    with pytest.raises(ValueError):
        make(tmp_path, synchronous="OFF")
    with pytest.raises(ValueError):
        make(tmp_path, max_rows=0)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"outbox\.db.*move the file aside"):
        make(tmp_path)


def test_an_outbox_of_an_older_schema_is_migrated_with_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that changes the schema adds its step to MIGRATIONS; the readings
    in an outbox of the version before are kept (they have not been sent yet)."""
    from gateway import outbox as outbox_mod

    ob = make(tmp_path)
    for n in range(5):
        put(ob, "a", n, 1000.0 + n)
    ob.commit(1010.0)
    ob.close()
    monkeypatch.setattr(outbox_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(outbox_mod, "MIGRATIONS", {1: "ALTER TABLE msg ADD COLUMN note TEXT"})
    ob = make(tmp_path)
    assert [r.payload for r in ob.pending_for_publish(10)] == [f"a#{n}".encode() for n in range(5)]
    ob.close()
    con = sqlite3.connect(tmp_path / "outbox.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "note" in [c[1] for c in con.execute("PRAGMA table_info(msg)")]
    con.close()


def test_an_outbox_of_a_newer_schema_is_refused_not_emptied(tmp_path: Path) -> None:
    ob = make(tmp_path)
    put(ob, "a", 0, 1000.0)
    ob.commit(1001.0)
    ob.close()
    con = sqlite3.connect(tmp_path / "outbox.db")
    con.execute("PRAGMA user_version=7")
    con.close()
    with pytest.raises(OutboxError, match="newer than this release"):
        make(tmp_path)
    con = sqlite3.connect(tmp_path / "outbox.db")
    assert con.execute("SELECT count(*) FROM msg").fetchone()[0] == 1
    con.close()


class _FailingConnection:
    """Wraps a connection; writes fail while `broken` (a full or failing SD card)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self.broken = True

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.broken and sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.con.execute(sql, *args)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        return self.con.executemany(sql, rows)  # type: ignore[arg-type]

    @property
    def in_transaction(self) -> bool:
        return self.con.in_transaction

    def close(self) -> None:
        self.con.close()


def test_failing_commits_are_counted_and_retried_without_loss(tmp_path: Path) -> None:
    ob = make(tmp_path, commit_interval_s=1.0)
    ob.commit(T0)
    failing = _FailingConnection(ob._con)
    ob._con = failing  # type: ignore[assignment]
    rid = put(ob, "a", 0, T0 + 1)  # put never raises
    assert ob.commit_errors == 1 and "disk is full" in (ob.last_error or "")
    assert ob.commits == 1  # only the one before the failure
    with pytest.raises(OutboxError):
        ob.commit(T0 + 2)
    assert ob.stats().backlog == 1
    failing.broken = False
    assert ob.maybe_commit(T0 + 3)
    assert [r.id for r in ob.pending_for_publish(5)] == [rid]


WRITER = textwrap.dedent(
    """
    import sys, time
    from gateway.outbox import Outbox
    ob = Outbox(sys.argv[1], max_rows=10**7, max_age_s=1e9, commit_interval_s=1e9,
                max_batch=10**6)
    n = 0
    while True:
        for _ in range(50):
            dev = f"d{n % 3}"
            seq = ob.next_seq(dev)
            ob.put(dev, f"t/{dev}", f"{dev}:{seq}".encode(), 1_790_000_000_000 + n, time.time())
            n += 1
        ob.commit(time.time())
        print(n, flush=True)
    """
)


def test_sigkill_mid_stream_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    committed = 0
    try:
        for line in proc.stdout:
            committed = int(line)
            if committed >= 3000:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert committed >= 3000
    ob = Outbox(db, max_rows=10**7, max_age_s=1e9)
    rows = ob.pending_for_publish(10**7)
    assert len(rows) >= committed  # the writer may have committed more before the kill
    last_seq: dict[str, int] = {}
    for r in rows:
        dev, seq = r.payload.decode().split(":")
        assert int(seq) == last_seq.get(dev, -1) + 1  # complete, in order, per device
        last_seq[dev] = int(seq)
    for dev, seq in last_seq.items():
        assert ob.next_seq(dev) == seq + 1  # seq continues after the last stored reading
