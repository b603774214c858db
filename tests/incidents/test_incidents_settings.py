"""incidents.yaml / the console's incidents: section: validation with file:line, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.checkcmd import check_file
from gateway.configfile import ConfigError
from rules.incidents.machine import DEFAULT_POLICIES
from rules.incidents.settings import load_incidents_file

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_checks_and_resolves_paths() -> None:
    kind, issues, _ = check_file(ROOT / "examples" / "incidents.yaml")
    assert (kind, issues) == ("incidents", [])
    f = load_incidents_file(ROOT / "examples" / "incidents.yaml")
    assert f.incidents.db == ROOT / "examples" / "state" / "incidents.db"
    assert f.rules_file == ROOT / "examples" / "rules.yaml"
    assert [c.name for c in f.incidents.contacts("site-01", 1)] == ["Zhang Min"]
    assert f.incidents.policies()["gateway_offline"].open_after == 300


def test_defaults_and_overrides_per_cause(tmp_path: Path) -> None:
    p = tmp_path / "i.yaml"
    p.write_text("incidents:\n  causes:\n    unsprayed: {overdue_after: 10m}\n")
    pol = load_incidents_file(p).incidents.policies()
    assert pol["unsprayed"].overdue_after == 600
    assert pol["unsprayed"].open_after == DEFAULT_POLICIES["unsprayed"].open_after
    assert pol["rule_active"] == DEFAULT_POLICIES["rule_active"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            "incidents:\n  sites:\n    site-01:\n      contacts:\n"
            "        - {name: Li, notify: nowhere}\n",
            2,
            "names notifier 'nowhere'",
        ),
        ("incidents:\n  causes:\n    dust_storm: {open_after: 1m}\n", 3, "rule_active"),
        ("incidents:\n  base_url: ftp://x\n", 2, "base_url"),
        (
            "incidents:\n  sites:\n    site-01:\n      contacts:\n"
            "        - {name: Li, notify: n, level: 3}\n"
            "  notifiers: {n: {type: webhook, url: 'http://127.0.0.1:1/'}}\n",
            5,
            "level",
        ),
    ],
)
def test_mistakes_name_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = tmp_path / "incidents.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_incidents_file(p)
    msg = str(err.value)
    assert f"incidents.yaml:{line}:" in msg and words in msg, msg
