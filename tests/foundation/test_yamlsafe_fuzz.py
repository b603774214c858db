"""Fuzz the config door: mutated example files and arbitrary bytes through `dustgate check`.

Whatever the file holds, the result is a valid config or ConfigIssues that each name
the file and a line:col inside it, never another exception. Bounded example counts
keep this to a few seconds in CI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.checkcmd import check_file
from gateway.configfile import ConfigError
from gateway.yamlsafe import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*.yaml"))]  # every kind

# pieces a careless operator or a hostile form might put anywhere
FRAGMENTS = [
    b"{", b"}", b"[", b"]", b": ", b"? ", b"- ", b"&a ", b"*a", b"<<: *a\n", b"<<: ",
    b"!!int ", b"!!str ", b"!!map ", b"!!seq ", b"!!set ", b"!!binary ", b"!!timestamp ",
    b"!!float ", b"!!bool ", b"!!null ", b"!custom ", b"!!python/object:os.system ",
    b"\n", b"  ", b"\t", b"{a: 1}", b"[1, 2]", b"9" * 400, b"1e400", b"1.0e400", b".inf",
    b"\x00", b"\xff", b"\xe9", b"\r", b"'", b'"', b"#", b"|", b">", b"~", b"null", b"yes",
    b"---\n", b"...\n", b"%YAML 1.1\n", b"\xef\xbb\xbf", b"\xe2\x80\xa8", b"[" * 80,
    b"{" * 80, b"1:30", b"0x1F", b"-9223372036854775809", b"2020-13-45",
    b"!!int abc", b"!!float x", b"!!bool maybe", b"!!timestamp 2020-13-45", b"!!binary zz",
    b"{? {a: 1} : 2}", b"[[[]]]", b"*undefined", b"&b [*b]", b"9" * 5000,
]  # fmt: skip


@st.composite
def mutated_example(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["value", "value", "insert", "delete", "random", "dup-line"]))
        if kind == "value":  # replace the value after a "key: " by a fragment
            start = data.find(b": ", pos)
            if start < 0:
                continue
            end = min(i for i in (data.find(b"\n", start), len(data)) if i >= 0)
            data = data[: start + 2] + draw(st.sampled_from(FRAGMENTS)) + data[end:]
        elif kind == "insert":
            data = data[:pos] + draw(st.sampled_from(FRAGMENTS)) + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 40)) :]
        elif kind == "random":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=12)) + data[pos:]
        else:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            line = data[start : (end + 1 if end >= 0 else len(data))]
            data = data[:start] + line + line + data[start:]
    return data


def _assert_placed(issues: list, path: Path, data: bytes) -> None:
    lines = data.count(b"\n") + data.count(b"\r") + 2
    for issue in issues:
        assert issue.line >= 1 and issue.col >= 1, issue
        assert str(issue).startswith(f"{issue.file}:{issue.line}:{issue.col}: ")
        if issue.file != str(path):  # a file it names (incidents.yaml -> rules_file)
            assert Path(issue.file).parent == path.parent, issue
            continue
        assert issue.line <= lines, issue


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_example())
def test_check_on_mutated_examples_gives_a_config_or_placed_issues(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.yaml"
        path.write_bytes(data)
        kind, issues, _ = check_file(path)  # any other exception fails the test
        if issues:
            assert kind == "?"
            _assert_placed(issues, path, data)
        else:
            assert kind != "?"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_loader_on_any_bytes_gives_data_or_placed_issues(data: bytes) -> None:
    try:
        doc = parse_yaml(data, "any.yaml")
    except ConfigError as exc:
        issues = exc.issues
        assert len(issues) == 1
    else:
        issues = doc.issues
    _assert_placed(issues, Path("any.yaml"), data)
