"""The replay's fast paths against their plain references.

- CSV: ``str.split`` batches give exactly the rows (or the error) of ``csv.reader``;
  ``select`` changes only which metrics a reading carries, never which rows
  are good, bad or filtered.
"""

from __future__ import annotations

import csv
import io
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.replay import _row_batches, read_csv

# cells from a small alphabet that hits every csv special case: quotes, CR, LF, NUL
cell = st.text(alphabet=st.sampled_from(list('ab1.,"\r\n\x00 -')), max_size=4)
line = st.lists(cell, min_size=0, max_size=4).map(",".join)
csv_text = st.lists(line, max_size=12).map("\n".join)


def csv_module_rows(stream: io.StringIO) -> tuple[list[list[str]], str | None]:
    rows: list[list[str]] = []
    try:
        for row in csv.reader(stream):
            rows.append(row)
    except csv.Error as exc:
        return rows, str(exc)
    return rows, None


def batch_rows(stream: io.StringIO) -> tuple[list[list[str]], str | None]:
    rows: list[list[str]] = []
    try:
        for batch in _row_batches(stream):
            rows.extend(batch)
    except csv.Error as exc:
        return rows, str(exc)
    return rows, None


@settings(max_examples=400, deadline=None)
@given(csv_text, st.sampled_from(["\n", "\r\n"]), st.sampled_from([None, "", "\n"]))
def test_row_batches_are_the_csv_modules_rows(text: str, eol: str, newline: str | None) -> None:
    text = text.replace("\n", eol)
    assert batch_rows(io.StringIO(text, newline=newline)) == csv_module_rows(
        io.StringIO(text, newline=newline)
    )


def test_row_batches_switch_to_the_csv_module_at_the_first_quote() -> None:
    plain = "".join(f"{i},x,{i * 2}\n" for i in range(20_000))  # several batches
    quoted = 'q,"a\nb",c\n1,2,3\n'
    text = plain + quoted + plain
    assert batch_rows(io.StringIO(text)) == csv_module_rows(io.StringIO(text))
    assert len(batch_rows(io.StringIO(text))[0]) == 40_002


WIDE = """\
ts,site,device,pm10,pm25,temp,status
1000,s,a,10,5,,
1000,s,b,11,x,3,
2000,s,a,,6,2,calibrating
2000,s,b,12,7,
3000,s,a,13,8,1,
bad,s,a,13,8,1,
4000,s,c,1,2,3,
5000,s,a,14,9,0,
"""


def test_select_keeps_the_rows_and_cuts_the_metrics() -> None:
    def read(select: bool) -> tuple[list[tuple], Counter[str]]:
        c: Counter[str] = Counter()
        r = read_csv(io.StringIO(WIDE), c, start=1.5, end=5.0)
        it = r.select(lambda site, dev: {"pm10"} if dev == "a" else set()) if select else r
        return list(it), c

    full, c_full = read(False)
    cut, c_cut = read(True)
    assert c_full == c_cut == Counter(bad_rows=3)  # b@1000 (pm25 "x"), short b@2000, "bad" ts
    assert [r[:3] + r[4:] for r in full] == [r[:3] + r[4:] for r in cut]
    assert [r[3] for r in full] == [{"pm25": 6.0, "temp": 2.0}, {"pm10": 13.0, "pm25": 8.0,
                                    "temp": 1.0}, {"pm10": 1.0, "pm25": 2.0, "temp": 3.0}]  # fmt: skip
    assert [r[3] for r in cut] == [{}, {"pm10": 13.0}, {}]
    assert [r[4] for r in cut] == ["calibrating", "ok", "ok"]
