"""Outbox against a simple in-memory model, over random operation sequences.

Operations: put, commit, pending, ack (of in-flight, requeued or unknown ids),
requeue, next_seq, crash (reopen without commit) and clean restart. After
every step the outbox must hand out exactly what the model says, so: nothing
committed and unacked is ever lost, per-key order holds in what is handed out,
the row bound holds after each commit and eviction counts are exact.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.outbox import Outbox

T0 = 1_790_000_000.0
KEYS = ("a", "b", "c")
MAX_AGE = 100.0


@dataclass
class Model:
    max_rows: int
    max_batch: int
    rows: dict[int, tuple[str, str, bytes, int]] = field(default_factory=dict)
    committed: list[int] = field(default_factory=list)  # in the database, id order
    buffered: list[int] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    inflight: set[int] = field(default_factory=set)
    requeued: set[int] = field(default_factory=set)
    handed: set[int] = field(default_factory=set)  # handed since the last requeue/restart
    evicted: int = 0
    seq: dict[str, int] = field(default_factory=dict)
    saved_seq: dict[str, int] = field(default_factory=dict)

    def commit(self, now: float) -> None:
        self.committed = sorted(set(self.committed) | set(self.buffered))
        self.buffered = []
        self.committed = [i for i in self.committed if i not in self.acked]
        for i in self.acked:
            self.rows.pop(i, None)
        self.acked = set()
        cutoff = int((now - MAX_AGE) * 1000)
        n = 0
        while n < len(self.committed) and self.rows[self.committed[n]][3] < cutoff:
            n += 1
        n = max(n, len(self.committed) - self.max_rows)
        gone, self.committed = self.committed[:n], self.committed[n:]
        self.evicted += len(gone)
        for i in gone:
            self.inflight.discard(i)
            self.requeued.discard(i)
            self.handed.discard(i)
            del self.rows[i]
        self.saved_seq = dict(self.seq)

    def pending(self, limit: int) -> list[int]:
        out = [i for i in self.committed if i not in self.handed and i not in self.acked][:limit]
        self.handed.update(out)
        self.inflight.update(out)
        self.requeued.difference_update(out)
        return out

    def ack(self, i: int) -> None:
        if i in self.inflight:
            self.inflight.discard(i)
        elif i in self.requeued:
            self.requeued.discard(i)
        else:
            return
        self.acked.add(i)

    def requeue(self) -> None:
        self.requeued |= self.inflight
        self.inflight = set()
        self.handed = set()

    def restart(self, crashed: bool, now: float) -> None:
        if crashed:
            for i in self.buffered:
                del self.rows[i]
            self.buffered = []
            self.acked = set()
            self.seq = dict(self.saved_seq)
        else:
            self.commit(now)
        self.inflight, self.requeued, self.handed = set(), set(), set()


put_op = st.tuples(
    st.just("put"), st.sampled_from(KEYS), st.floats(0, 10) | st.floats(0, 1.5 * MAX_AGE)
)
ops = st.lists(
    st.one_of(
        put_op,
        put_op,
        put_op,
        st.tuples(st.just("commit")),
        st.tuples(st.just("pending"), st.integers(1, 6)),
        st.tuples(st.just("pending"), st.integers(1, 6)),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("ack_unknown"), st.integers(0, 10_000)),
        st.tuples(st.just("ack_issued"), st.integers(0, 10_000)),
        st.tuples(st.just("requeue")),
        st.tuples(st.just("seq"), st.sampled_from(KEYS)),
        st.tuples(st.just("crash")),
        st.tuples(st.just("restart")),
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops,
    max_rows=st.integers(1, 10),
    max_batch=st.integers(1, 6),
    steps=st.lists(st.floats(0, 4), min_size=80, max_size=80),
)
def test_outbox_matches_model(
    ops: list[tuple], max_rows: int, max_batch: int, steps: list[float]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "o.db"

        def open_outbox(now: float) -> Outbox:
            ob = Outbox(
                path,
                max_rows=max_rows,
                max_age_s=MAX_AGE,
                commit_interval_s=1e9,
                max_batch=max_batch,
            )
            ob.commit(now)  # so that only a full batch makes put() commit
            return ob

        model = Model(max_rows, max_batch)
        now = T0
        ob = open_outbox(now)
        model.commit(now)
        n = 0
        issued: list[int] = []
        for step, op in zip(steps, ops, strict=False):
            now += step
            kind = op[0]
            if kind == "put":
                key, age = op[1], op[2]
                ts = int((now - age) * 1000)
                payload = f"{key}:{n}".encode()
                n += 1
                rid = ob.put(key, f"t/{key}", payload, ts, now)
                assert rid not in model.rows
                model.rows[rid] = (key, f"t/{key}", payload, ts)
                issued.append(rid)
                model.buffered.append(rid)
                if len(model.buffered) >= max_batch:
                    model.commit(now)
            elif kind == "commit":
                ob.commit(now)
                model.commit(now)
                assert ob.stats().committed <= max_rows
            elif kind == "pending":
                got = ob.pending_for_publish(op[1])
                want = model.pending(op[1])
                assert [r.id for r in got] == want
                for r in got:
                    assert (r.key, r.topic, r.payload, r.ts) == model.rows[r.id]
            elif kind == "ack":
                ackable = sorted(model.inflight | model.requeued)
                if ackable:
                    i = ackable[op[1] % len(ackable)]
                    ob.ack(i)
                    model.ack(i)
            elif kind == "ack_issued":  # possibly evicted, deleted or never handed out
                if issued:
                    i = issued[op[1] % len(issued)]
                    ob.ack(i)
                    model.ack(i)
            elif kind == "ack_unknown":
                i = op[1] + 100_000  # never issued
                ob.ack(i)
                model.ack(i)
            elif kind == "requeue":
                ob.requeue_inflight()
                model.requeue()
            elif kind == "seq":
                key = op[1]
                want_seq = model.seq.get(key, 0)
                model.seq[key] = want_seq + 1
                assert ob.next_seq(key) == want_seq
            elif kind in ("crash", "restart"):
                ob.close(commit=kind == "restart", now=now)
                model.restart(crashed=kind == "crash", now=now)
                ob = open_outbox(now)
                model.commit(now)
            s = ob.stats()
            unacked = [i for i in model.committed if i not in model.acked]
            assert s.committed == len(unacked)
            assert s.backlog == len(unacked) + len(model.buffered)
            assert s.inflight == len(model.inflight)
            assert s.evicted == model.evicted
        # Finally everything the model still holds comes out, in order, per key too.
        ob.commit(now)
        model.commit(now)
        ob.requeue_inflight()
        model.requeue()
        got = ob.pending_for_publish(10_000)
        assert [r.id for r in got] == model.pending(10_000)
        for key in KEYS:
            ids = [r.id for r in got if r.key == key]
            assert ids == sorted(ids)
        ob.close()
