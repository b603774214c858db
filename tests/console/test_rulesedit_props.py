"""Round-trip edits of rules.yaml (rules.console.rulesedit): only the edited values change,
the engine's loader reads them back, errors land on the right field and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.configfile import parse_duration
from rules.console import rulesedit
from rules.core.config import load_rules_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "rules.yaml").read_text()
PATH = ROOT / "examples" / "rules.yaml"
RULE_IDS = re.findall(r"^\s*- id: (\S+)", EXAMPLE, re.M)

durations = st.one_of(
    st.integers(1, 3600).map(str),
    st.integers(1, 59).map(lambda n: f"{n}s"),
    st.integers(1, 120).map(lambda n: f"{n}m"),
    st.tuples(st.integers(1, 5), st.integers(1, 59)).map(lambda t: f"{t[0]}h{t[1]}m"),
)
hours = (
    st.tuples(st.integers(0, 23), st.integers(0, 23))
    .filter(lambda t: t[0] != t[1])
    .map(lambda t: f"{t[0]:02d}:00-{t[1]:02d}:30")
)


@st.composite
def forms(draw: st.DrawFn) -> dict[str, str]:
    threshold = draw(st.integers(20, 900))
    clear = draw(st.integers(0, threshold))
    return {
        "threshold": str(threshold),
        "clear": str(clear),
        "for": draw(durations),
        "window": draw(durations),
        "run_for": draw(durations),
        "cooldown": draw(durations),
        "active_hours": draw(hours),
    }


@settings(max_examples=25, deadline=None)
@given(rule_id=st.sampled_from(RULE_IDS), form=forms())
def test_edit_reads_back_and_touches_only_the_edited_lines(
    rule_id: str, form: dict[str, str]
) -> None:
    values, errors = rulesedit.parse_form(form)
    assert errors == {}
    new = rulesedit.apply_edit(EXAMPLE, rule_id, values)
    rf = load_rules_file(PATH, text=new)
    rule = next(r for r in rf.rules if r.id == rule_id)
    assert rule.threshold == float(form["threshold"])
    assert rule.clear_level == float(form["clear"])
    assert rule.for_ == parse_duration(form["for"])
    assert rule.window == parse_duration(form["window"])
    assert rule.actions.run_for == parse_duration(form["run_for"])
    assert rule.actions.cooldown == parse_duration(form["cooldown"])
    assert rule.active is not None and rule.active.hours == form["active_hours"]
    # the other rules are exactly as before
    old_rf = load_rules_file(PATH, text=EXAMPLE)
    for before, after in zip(old_rf.rules, rf.rules, strict=True):
        if before.id != rule_id:
            assert before == after
    # every comment is still there, and nothing before the rule's block moved
    assert [ln for ln in EXAMPLE.splitlines() if ln.strip().startswith("#")] == [
        ln for ln in new.splitlines() if ln.strip().startswith("#")
    ]
    start = EXAMPLE.index(f"- id: {rule_id}")
    assert new[:start] == EXAMPLE[:start]


@settings(max_examples=20, deadline=None)
@given(rule_id=st.sampled_from(RULE_IDS), threshold=st.integers(200, 900))
def test_a_changed_value_is_spliced_in_place(rule_id: str, threshold: int) -> None:
    current = rulesedit.current_values(EXAMPLE, rule_id)
    form = {**current, "threshold": str(threshold)}
    values, _ = rulesedit.parse_form(form)
    new = rulesedit.apply_edit(EXAMPLE, rule_id, values)
    old_lines, new_lines = EXAMPLE.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    if str(threshold) == current["threshold"]:
        assert changed == []
    else:
        assert len(changed) == 1
        a, b = changed[0]
        assert re.sub(r"\d+", "N", a) == re.sub(r"\d+", "N", b)  # same line, another number


@settings(max_examples=150, deadline=None)
@given(
    form=st.dictionaries(st.sampled_from([*rulesedit.FIELD_NAMES, "junk"]), st.text(max_size=60))
)
def test_any_form_parses_to_values_or_field_errors(form: dict[str, str]) -> None:
    values, errors = rulesedit.parse_form(form)
    assert set(values) | set(errors) == set(rulesedit.FIELD_NAMES)
    assert not set(values) & set(errors)
    for name, v in values.items():
        assert v is None or isinstance(v, int | float | str), name


@given(a=st.text(max_size=200), b=st.text(max_size=200))
def test_diff_is_empty_only_for_equal_texts(a: str, b: str) -> None:
    d = rulesedit.diff(a, b)
    assert (d == "") == (a.splitlines(keepends=True) == b.splitlines(keepends=True))


def test_removing_and_adding_keys_keeps_the_files_layout() -> None:
    values, _ = rulesedit.parse_form(
        {
            "threshold": "150",
            "clear": "",
            "for": "1m",
            "window": "15m",
            "run_for": "10m",
            "cooldown": "5m",
            "active_hours": "",
        }
    )
    new = rulesedit.apply_edit(EXAMPLE, "pm10-gate", values)
    d = rulesedit.diff(EXAMPLE, new)
    removed = [ln for ln in d.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in d.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert removed == [
        "-    clear: 100",
        '-    active: {hours: "06:00-22:00", days: [mon, tue, wed, thu, fri, sat, sun], tz: Asia/Shanghai}',
    ], d
    assert added == [
        "+    active: {days: [mon, tue, wed, thu, fri, sat, sun], tz: Asia/Shanghai}"
    ], d
    rule = next(r for r in load_rules_file(PATH, text=new).rules if r.id == "pm10-gate")
    assert rule.clear is None and rule.active is not None and rule.active.hours == "00:00-24:00"


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("clear", "200", "clear (200) must be at or below"),
        ("active_hours", "25:00-26:00", "25:00"),
        ("window", "0", "greater than or equal to 1"),
    ],
)
def test_model_errors_land_on_the_field_with_the_files_line(
    field: str, value: str, expect: str
) -> None:
    form = {**rulesedit.current_values(EXAMPLE, "pm10-gate"), field: value}
    values, errors = rulesedit.parse_form(form)
    assert errors == {}
    new = rulesedit.apply_edit(EXAMPLE, "pm10-gate", values)
    check = rulesedit.validate(PATH, new, "pm10-gate")
    assert not check.ok and list(check.fields) == [field], check
    msg = check.fields[field][0]
    assert expect in msg
    line = int(re.match(r"line (\d+):", msg).group(1))  # type: ignore[union-attr]
    key = {"active_hours": "active", "clear": "clear", "window": "window"}[field]
    assert new.splitlines()[line - 1].strip().startswith(f"{key}:")


def test_form_errors_are_per_field() -> None:
    values, errors = rulesedit.parse_form(
        {"threshold": "abc", "clear": "1e400", "for": "5 minutes", "window": "", "run_for": "8d"}
    )
    assert set(errors) == {"threshold", "clear", "for", "window", "run_for"}
    assert "expected a number" in errors["threshold"] and errors["window"] == "required"
    assert values == {"cooldown": None, "active_hours": None}  # empty optional fields: removed


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("extra", "at", "message"),
    [
        ("x: " + "[" * 2000 + "]" * 2000 + "\n", 0, "nested more than 64 levels deep"),
        ("x: a\x00b\n", 0, "character NUL (U+0000) is not allowed"),
        (
            "".join(
                f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}" if i else "a"] * 10) + "]\n"
                for i in range(12)
            ),
            4,  # l4 is the alias that crosses the budget
            "expands the document past 100000 nodes",
        ),
    ],
    ids=["deep", "nul", "laughs"],
)
def test_hostile_rules_text_is_an_edit_error_with_its_line(
    extra: str, at: int, message: str
) -> None:
    """The round-trip parser only sees text the safe loader accepted: deep nesting
    was a RecursionError after seconds, a NUL a ReaderError traceback."""
    text = EXAMPLE + extra
    line = EXAMPLE.count("\n") + 1 + at
    for call in (
        lambda: rulesedit.current_values(text, RULE_IDS[0]),
        lambda: rulesedit.apply_edit(text, RULE_IDS[0], {"threshold": 99}),
    ):
        with pytest.raises(
            rulesedit.EditError, match=rf"^rules.yaml:{line}:\d+: .*{re.escape(message)}"
        ):
            call()
