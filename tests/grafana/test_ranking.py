"""The ranking's rules, pure: only sites with enough valid data are ranked, dirtiest first;
the others follow, marked, never ranked as clean."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.history.report import NO_VALID_DATA, SiteRow, format_table, main, rank

pct = st.none() | st.floats(0, 100.5)
pm10 = st.none() | st.floats(0, 2000)
rows = st.lists(
    st.builds(
        lambda site, p, c: SiteRow(site, {"pm10_week": p, "completeness_pct": c}),
        st.from_regex(r"site-[a-z]{1,4}", fullmatch=True),
        pm10,
        pct,
    ),
    max_size=12,
    unique_by=lambda r: r.site,
)


@given(rows, st.floats(0, 100))
def test_only_sites_with_enough_valid_data_are_ranked(sites: list[SiteRow], limit: float):
    out = rank(sites, limit)
    assert sorted(r.site for r in out) == sorted(r.site for r in sites)  # nobody dropped
    ranked = [r for r in out if r.rank is not None]
    assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
    assert out[: len(ranked)] == ranked  # the unranked follow the ranked
    for r in ranked:
        p, c = r.get("pm10_week"), r.get("completeness_pct")
        assert p is not None and c and c >= limit and r.note == ""
    pm = [r.get("pm10_week") or 0 for r in ranked]
    assert pm == sorted(pm, reverse=True)
    for r in out[len(ranked) :]:
        no_data = r.get("pm10_week") is None or not r.get("completeness_pct")
        assert r.note == (NO_VALID_DATA if no_data else f"completeness under {limit:g} %")


def test_no_valid_data_is_said_not_left_blank():
    out = rank(
        [
            SiteRow("frozen", {"pm10_week": None, "completeness_pct": 0.0}),
            SiteRow("clean", {"pm10_week": 20.0, "completeness_pct": 99.0}),
            SiteRow("patchy", {"pm10_week": 10.0, "completeness_pct": 50.0}),
        ]
    )
    assert [(r.site, r.rank, r.note) for r in out] == [
        ("clean", 1, ""),
        ("patchy", None, "completeness under 75 %"),
        ("frozen", None, NO_VALID_DATA),
    ]
    last = format_table(out).splitlines()[-1]
    assert last.split()[:3] == ["-", "frozen", "0.0"]  # completeness beside the site
    assert last.count(NO_VALID_DATA) == 3  # both PM10 means, and why it is not ranked


@pytest.mark.parametrize("bad", ["0", "-5", "101", "nan", "most"])
def test_min_completeness_must_be_a_percentage(bad: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        main(["--min-completeness", bad])
    assert exc.value.code == 2
    assert "--min-completeness: expected a percentage" in capsys.readouterr().err
