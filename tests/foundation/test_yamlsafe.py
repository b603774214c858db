"""The one YAML loader: each hostile or broken input of issue 23 is a file:line:col message.

Every case here raised a Python exception, hung, or named the wrong line before
``gateway.yamlsafe`` existed (RecursionError, ConstructorError, ValueError,
OverflowError, TypeError, a "billion laughs" that never finished, NUL and bad
UTF-8 reported at line 1).
"""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest
from test_config_check import GOOD_SITE  # the same valid site.yaml

from gateway.checkcmd import check_file
from gateway.config import load_site_config
from gateway.configfile import ConfigError, load_yaml
from gateway.yamlsafe import YamlLimits, parse_yaml, read_yaml


def _only_issue(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    assert len(exc.value.issues) == 1, exc.value.issues
    return str(exc.value.issues[0])


def _check(tmp_path: Path, text: str | bytes) -> list[str]:
    f = tmp_path / "site.yaml"
    if isinstance(text, str):
        text = text.encode()
    f.write_bytes(text)
    _, issues, _ = check_file(f)
    return [str(i) for i in issues]


# ------------------------------------------------------------------ nesting


def test_deep_nesting_is_refused_at_its_line() -> None:
    text = "a: 1\nb: " + "[" * 500 + "]" * 500 + "\n"
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, "deep.yaml")
    assert _only_issue(exc) == "deep.yaml:2:67: nested more than 64 levels deep"


def test_deep_block_mappings_are_refused_too() -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"
    with pytest.raises(ConfigError, match=r"^d.yaml:65:\d+: nested more than 64"):
        parse_yaml(text, "d.yaml")


def test_nesting_within_the_limit_is_fine() -> None:
    doc = parse_yaml("a: " + "[" * 63 + "1" + "]" * 63)
    inner = doc.data["a"]
    for _ in range(62):
        inner = inner[0]
    assert inner == [1]


def test_depth_built_from_aliases_is_refused_at_the_alias() -> None:
    deep = "[" * 40 + "x" + "]" * 40
    text = f"a: &a {deep}\nb: &b {'[' * 30}*a{']' * 30}\n"
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, "al.yaml")
    assert _only_issue(exc).startswith("al.yaml:2:37: b")
    assert "alias *a nests the data more than 64 levels deep" in str(exc.value)


# ------------------------------------------------------------------ aliases


def _laughs(lines: int) -> str:
    out = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, lines):
        out += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]\n"
    return out


@pytest.mark.timeout(20)
def test_billion_laughs_is_refused_at_the_alias_before_expanding() -> None:
    text = _laughs(12)  # 10^12 leaves in about 600 bytes: the old loader never finished
    assert len(text) < 700
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, "lol.yaml")
    issue = exc.value.issues[0]
    assert (issue.file, issue.line) == ("lol.yaml", 5)  # l4 is where it crosses 100,000
    assert "alias *l3 expands the document past 100000 nodes" in issue.message


def test_aliases_within_the_budget_are_expanded() -> None:
    doc = parse_yaml(_laughs(3))
    assert doc.data["l2"][9][9] == ["lol"] * 10
    assert doc.positions[("l2", 3)].line == 3  # an alias sits where it is written
    assert doc.positions[("l2", 3, 0)].line == 2  # its inside where the anchor is
    with pytest.raises(ConfigError, match="past 1000 nodes"):
        parse_yaml(_laughs(4), limits=YamlLimits(max_alias_nodes=1000))


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_yaml("a: 1\nb: &b [1, *b]\n", "cyc.yaml")
    assert _only_issue(exc).startswith("cyc.yaml:2:11: ")
    assert "alias *b refers to a node that contains it" in str(exc.value)


def test_undefined_alias_is_a_syntax_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"^u.yaml:2:4: YAML syntax: .*undefined alias"):
        parse_yaml("a: 1\nb: *nope\n", "u.yaml")


# ------------------------------------------------------------------ merge keys


MERGED = """\
defaults: &defaults
  interval: 10s
  profile: dust-station
  bus: bus1
other: &other {slave_id: 3, bus: bus2}
one:
  <<: *defaults
  id: gate
two:
  <<: [*other, *defaults]
  id: north
  interval: 5s
"""


def test_merge_keys_written_keys_win_then_sources_in_order() -> None:
    doc = parse_yaml(MERGED, "m.yaml")
    assert doc.issues == []
    assert doc.data["one"] == {
        "id": "gate",
        "interval": "10s",
        "profile": "dust-station",
        "bus": "bus1",
    }
    two = doc.data["two"]
    assert two["interval"] == "5s" and two["bus"] == "bus2" and two["slave_id"] == 3
    assert two["profile"] == "dust-station"
    # a merged key is placed where it is written, not at the << line
    assert doc.positions[("one", "interval")].line == 2
    assert doc.positions[("two", "bus")].line == 5
    assert doc.positions[("two", "interval")].line == 12


def test_merge_keys_in_a_site_file_are_validated_at_the_written_line(tmp_path: Path) -> None:
    text = GOOD_SITE.replace(
        "buses:\n  - {id: bus1, type: rtu, port: /dev/ttyUSB0}\n",
        "buses:\n"
        "  - &rtu\n"
        "    id: bus1\n"
        "    port: /dev/ttyUSB0\n"
        "    baudrate: 9600\n"
        "  - <<: *rtu\n"
        "    id: bus2\n"
        "    port: /dev/ttyUSB1\n",
    )
    cfg = load_site_config(tmp_path / "s.yaml", text=text)
    assert [(b.id, b.port, b.baudrate) for b in cfg.buses] == [
        ("bus1", "/dev/ttyUSB0", 9600),
        ("bus2", "/dev/ttyUSB1", 9600),
    ]
    bad = text.replace("baudrate: 9600", "baudrate: 12")
    with pytest.raises(ConfigError) as exc:
        load_site_config(tmp_path / "s.yaml", text=bad)
    lines = {(i.path, i.line) for i in exc.value.issues}
    assert lines == {("buses[0].baudrate", 7), ("buses[1].baudrate", 7)}


def test_a_merge_of_something_else_than_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^m.yaml:2:9: b: merge key << needs a mapping"):
        parse_yaml("a: &a [1]\nb: {<<: *a}\n", "m.yaml")


# ------------------------------------------------------------------ tags and numbers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!int abc", "!!int 'abc' is not an integer"),
        ("!!float abc", "!!float 'abc' is not a number"),
        ("!!bool abc", "!!bool cannot be 'abc'"),
        ("!!null abc", "!!null cannot be 'abc'"),
        ("!!timestamp 2020-13-45", "bad date or time '2020-13-45': month must be in 1..12"),
        ("!!timestamp yesterday", "!!timestamp cannot be 'yesterday'"),
        ("!!binary zzz", "tag !!binary is not supported"),
        ("!!python/object:os.system x", "tag !!python/object:os.system is not supported"),
        ("!custom x", "tag !custom is not supported"),
        ("!!set {x, y}", "tag !!set is not supported on a mapping"),
        ("!!omap [{x: 1}]", "tag !!omap is not supported on a list"),
        ("9" * 5000, "number of 5000 characters (at most 64)"),
        ("9" * 40, "integer out of the 64-bit range"),
        ("-9223372036854775809", "integer out of the 64-bit range"),
    ],
)
def test_bad_tags_and_numbers_are_issues_at_their_place(value: str, message: str) -> None:
    doc = parse_yaml(f"a: 1\nb:\n  c: {value}\n", "t.yaml")
    assert len(doc.issues) == 1
    assert str(doc.issues[0]).startswith(f"t.yaml:3:6: b.c: {message}")


def test_supported_tags_are_applied() -> None:
    doc = parse_yaml(
        "a: !!str 5\nb: !!float 1\nc: !!int '7'\nd: !!bool yes\ne: !!null ''\n"
        "f: !!timestamp 2024-05-01\ng: 9223372036854775807\nh: 0x10\ni: 1:30\n"
    )
    assert doc.issues == []
    assert doc.data == {
        "a": "5",
        "b": 1.0,
        "c": 7,
        "d": True,
        "e": None,
        "f": datetime.date(2024, 5, 1),
        "g": 2**63 - 1,
        "h": 16,
        "i": 90,
    }


def test_huge_integer_in_a_duration_is_a_message_not_an_overflow(tmp_path: Path) -> None:
    issues = _check(tmp_path, GOOD_SITE.replace("interval: 10s", "interval: " + "9" * 400))
    assert issues == [
        f"{tmp_path / 'site.yaml'}:6:60: devices[0].interval: number of 400 characters (at most 64)"
    ]
    issues = _check(tmp_path, GOOD_SITE.replace("interval: 10s", "interval: " + "9" * 30))
    assert issues == [
        f"{tmp_path / 'site.yaml'}:6:60: devices[0].interval: "
        "integer out of the 64-bit range (quote it if it is text, not a number)"
    ]


# ------------------------------------------------------------------ keys


def test_a_mapping_or_list_as_a_key_is_an_issue() -> None:
    doc = parse_yaml("a: 1\n? {x: 1}\n: 2\n[1, 2]: 3\nb: 4\n", "k.yaml")
    assert [str(i) for i in doc.issues] == [
        "k.yaml:2:3: keys must be plain scalars",
        "k.yaml:4:1: keys must be plain scalars",
    ]
    assert doc.data == {"a": 1, "b": 4}


@pytest.mark.parametrize(
    ("old", "new", "line", "where"),
    [
        ("bus: bus1, profile: dust", "bus: {a: 1}, profile: dust", 6, "devices[0].bus"),
        ("bus: bus1, profile: relay", "bus: [x], profile: relay", 8, "actuators[0].bus"),
        ("{id: gate, bus", "{id: {a: 1}, bus", 6, "devices[0].id"),
        ("{id: bus1, type", "{id: [bus1], type", 4, "buses[0].id"),
    ],
)
def test_a_mapping_where_an_id_belongs_is_a_type_error_not_a_crash(
    tmp_path: Path, old: str, new: str, line: int, where: str
) -> None:
    issues = _check(tmp_path, GOOD_SITE.replace(old, new, 1))
    assert any(
        i.startswith(f"{tmp_path / 'site.yaml'}:{line}:") and f"{where}: Input should be" in i
        for i in issues
    ), issues


def test_a_profile_name_that_is_no_file_name_is_refused_without_looking(tmp_path: Path) -> None:
    issues = _check(tmp_path, GOOD_SITE.replace("dust-station", "dust" + "9" * 400))
    assert (
        len(issues) == 1
        and ":6:" in issues[0]
        and "devices[0].profile: unknown profile" in (issues[0])
    )


def test_duplicate_keys_and_their_merged_twins() -> None:
    doc = parse_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n  y: 3\n  y: 4\n", "d.yaml")
    assert doc.data["b"] == {"x": 2, "y": 3}  # a written key overrides a merged one
    assert [str(i) for i in doc.issues] == ["d.yaml:6:3: b.y: duplicate key"]


# ------------------------------------------------------------------ characters


def test_nul_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    text = GOOD_SITE + "".join(f"# comment {i}\n" for i in range(88)) + "extra: a\x00b\n"
    assert text.count("\n") == 97
    assert _check(tmp_path, text) == [
        f"{tmp_path / 'site.yaml'}:97:9: character NUL (U+0000) is not allowed"
    ]


def test_invalid_utf8_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    text = GOOD_SITE.encode() + b"# c\n" * 88 + b"extra: caf\xe9\n"
    assert _check(tmp_path, text) == [
        f"{tmp_path / 'site.yaml'}:97:11: not UTF-8: byte 0xE9 cannot be decoded"
    ]


def test_control_characters_after_crlf_lines_count_lines_as_yaml_does() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_yaml(b"a: 1\r\nb: 2\r\nc: \x07\r\n", "c.yaml")
    assert _only_issue(exc) == "c.yaml:3:4: character U+0007 is not allowed"


def test_a_bom_is_accepted() -> None:
    assert parse_yaml("\ufeffa: 1\n".encode()).data == {"a": 1}


# ------------------------------------------------------------------ API


def test_strings_and_bytes_and_files(tmp_path: Path) -> None:
    snippet = parse_yaml("x: [1, 2]\n", "form:threshold")
    assert snippet.data == {"x": [1, 2]} and snippet.positions[("x", 1)].col == 8
    assert parse_yaml(b"").data == {}
    f = tmp_path / "f.yaml"
    f.write_text("a: 1\n")
    assert read_yaml(f).data == {"a": 1} and load_yaml(f)[0] == {"a": 1}
    with pytest.raises(ConfigError, match=r"^.*nope.yaml:1:1: cannot read file"):
        read_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"^big:1:1: 11 bytes: more than the 10 allowed"):
        parse_yaml("a: 12345678", "big", YamlLimits(max_bytes=10))


def test_several_documents_are_refused_with_a_line() -> None:
    with pytest.raises(ConfigError, match=r"^two:2:1: YAML syntax: .*single document"):
        parse_yaml(textwrap.dedent("a: 1\n---\nb: 2\n"), "two")
