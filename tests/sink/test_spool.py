"""The on-disk spool: order, restart survival, torn tails, the size bound."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.sink.spool import Spool


def lines(a: int, b: int) -> list[str]:
    return [f"m,site=s v={i}i {i}" for i in range(a, b)]


def drain(sp: Spool, batch: int = 7) -> list[str]:
    out: list[str] = []
    while sp.has_data():
        got, cur = sp.peek(batch)
        assert got, "peek must make progress while data is pending"
        out += got
        sp.commit(cur)
    return out


def test_fifo_across_segments_and_cleanup(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=300)
    sp.open()
    for i in range(0, 100, 10):
        sp.append(lines(i, i + 10))
    assert sp.segment_count > 3
    assert drain(sp) == lines(0, 100)
    assert not sp.has_data() and sp.pending_bytes == 0
    assert not list(tmp_path.glob("seg-*.lp"))  # replayed segments are deleted
    sp.append(lines(100, 103))  # and the spool keeps working afterwards
    assert drain(sp) == lines(100, 103)


def test_restart_keeps_unsent_lines_and_the_cursor(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=400)
    sp.open()
    sp.append(lines(0, 30))
    got, cur = sp.peek(12)
    sp.commit(cur)
    assert got == lines(0, 12)
    sp.close()
    again = Spool(tmp_path, max_bytes=10**6, segment_bytes=400)
    again.open()
    again.append(lines(30, 35))
    assert drain(again) == lines(12, 35)


def test_torn_last_line_is_cut_on_open(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=10**6)
    sp.open()
    sp.append(lines(0, 3))
    sp.close()
    seg = next(tmp_path.glob("seg-*.lp"))
    with seg.open("ab") as f:
        f.write(b"m,site=s v=99i 9")  # a crash in the middle of an append
    again = Spool(tmp_path, max_bytes=10**6)
    again.open()
    assert drain(again) == lines(0, 3)


def test_bound_drops_oldest_and_counts(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=2000, segment_bytes=250)
    sp.open()
    total = 0
    dropped = 0
    for i in range(0, 400, 10):
        dropped += sp.append(lines(i, i + 10))
        total += 10
        assert sp.pending_bytes <= 2000 + 250 + 200  # bound + one segment + one batch
    kept = drain(sp)
    assert dropped == sp.dropped_lines > 0
    assert len(kept) + dropped == total
    assert kept == lines(total - len(kept), total)  # the newest survive, in order


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["append", "replay", "reopen"]), st.integers(1, 15)), max_size=30
    )
)
def test_model_fifo_with_restarts(tmp_path_factory: object, ops: list[tuple[str, int]]):
    d = tmp_path_factory.mktemp("spool")  # type: ignore[attr-defined]
    sp = Spool(d, max_bytes=10**7, segment_bytes=256)
    sp.open()
    model: list[str] = []
    n = 0
    for op, k in ops:
        if op == "append":
            new = lines(n, n + k)
            n += k
            sp.append(new)
            model += new
        elif op == "replay":
            got, cur = sp.peek(k)
            assert got == model[: len(got)] and (got or not model)
            sp.commit(cur)
            model = model[len(got) :]
        else:
            sp.close()
            sp = Spool(d, max_bytes=10**7, segment_bytes=256)
            sp.open()
    assert drain(sp) == model


def test_peek_takes_at_least_one_line_and_handles_long_lines(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=10**8)
    sp.open()
    long_line = 'm,site=s text="' + "x" * 600_000 + '" 1'
    sp.append(["m v=1i 1", long_line, "m v=2i 2"])
    got, cur = sp.peek(100, max_bytes=5)  # byte budget smaller than one line
    assert got == ["m v=1i 1"]
    sp.commit(cur)
    got, cur = sp.peek(100, max_bytes=5)
    assert got == [long_line]
    sp.commit(cur)
    assert drain(sp) == ["m v=2i 2"]
