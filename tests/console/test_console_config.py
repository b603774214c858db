"""console.yaml: validated like the other files, known to `dustgate check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.checkcmd import check_file
from gateway.configfile import ConfigError
from rules.console.config import load_console_file

ROOT = Path(__file__).resolve().parents[2]


def test_example_is_valid_and_check_knows_it() -> None:
    kind, issues, _notes = check_file(ROOT / "examples" / "console.yaml")
    assert (kind, issues) == ("console", [])
    cfg = load_console_file(ROOT / "examples" / "console.yaml")
    assert cfg.rules_file == ROOT / "examples" / "rules.yaml"  # relative to the file
    assert cfg.console.listen == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [
        ("console: {port: 99999}\nrules_file: r.yaml\n", 1, "console.port", "less than or equal"),
        ("console: {}\nrules_file: r.yaml\nstroe: x.db\n", 3, "stroe", "unknown key"),
        ("console: {listen: 127.0.0.1}\n", 1, "rules_file", "required"),
        (
            "console:\n  tls_cert_file: /x.crt\nrules_file: r.yaml\n",
            2,
            "console",
            "go together",
        ),
        ("console: {}\nrules_file: r.yaml\nsites: [Site<1>]\n", 3, "sites[0]", "pattern"),
        (
            "console: {}\nrules_file: r.yaml\nmqtt: {password: {env: NO_SUCH_VAR_X}}\n",
            3,
            "mqtt.password",
            "NO_SUCH_VAR_X",
        ),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, path: str, message: str
) -> None:
    f = tmp_path / "console.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_console_file(f)
    issue = exc.value.issues[0]
    assert issue.file == str(f)
    assert issue.line == line, str(exc.value)
    assert issue.path.startswith(path), str(exc.value)
    assert message in issue.message, str(exc.value)


def test_check_reports_console_problems(tmp_path: Path) -> None:
    f = tmp_path / "console.yaml"
    f.write_text("console:\n  port: none\nrules_file: r.yaml\n")
    kind, issues, _ = check_file(f)
    assert kind == "?" and len(issues) == 1
    assert str(issues[0]).startswith(f"{f}:2:")
