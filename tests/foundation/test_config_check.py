"""`dustgate check`: examples pass; each kind of mistake yields the right file:line."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.configfile import parse_duration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "site.yaml", ROOT / "examples" / "rules.yaml"]

GOOD_SITE = """\
site: site-01
mqtt: {host: 127.0.0.1, port: 1883}
buses:
  - {id: bus1, type: rtu, port: /dev/ttyUSB0}
devices:
  - {id: gate, bus: bus1, profile: dust-station, interval: 10s}
actuators:
  - {id: cannon-1, bus: bus1, profile: relay-8ch, channel: 0, limits: {max_on: 15m}}
"""


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and "replay" in proc.stdout


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "site.yaml: ok (site config)" in out and "rules.yaml: ok (rules config)" in out


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    f = tmp_path / "site.yaml"
    f.write_text(textwrap.dedent(text))
    rc = main(["check", str(f)])
    return rc, capsys.readouterr().err


def test_good_site_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(tmp_path, GOOD_SITE, capsys)[0] == 0


BROKEN = [
    # (what, replace this, with this, expected line, expected fragment)
    (
        "yaml syntax",
        "mqtt: {host: 127.0.0.1, port: 1883}",
        "mqtt: host: 127.0.0.1",
        2,
        "YAML syntax",
    ),
    ("unknown key", "port: 1883}", "port: 1883, hots: x}", 2, "mqtt.hots: unknown key"),
    ("wrong type", "port: 1883}", "port: many}", 2, "mqtt.port: Input should be a valid integer"),
    ("out of range", "port: 1883}", "port: 70000}", 2, "mqtt.port: Input should be less than"),
    (
        "bad duration",
        "interval: 10s",
        "interval: 10 parsecs",
        6,
        "devices[0].interval: expected a duration",
    ),
    (
        "undefined bus",
        "bus: bus1, profile: dust",
        "bus: bus9, profile: dust",
        6,
        "undefined bus 'bus9'",
    ),
    (
        "unknown profile",
        "profile: dust-station",
        "profile: dust-statoin",
        6,
        "unknown profile 'dust-statoin'",
    ),
    ("bad id", "site: site-01", "site: Site 01", 1, "site: String should match pattern"),
    (
        "duplicate key",
        "site: site-01\n",
        "site: site-01\nsite: site-02\n",
        2,
        "site: duplicate key",
    ),
    (
        "missing required",
        "{id: bus1, type: rtu, port: /dev/ttyUSB0}",
        "{id: bus1, type: rtu}",
        4,
        "buses[0].port: required key is missing",
    ),
    ("relay channel", "channel: 0", "channel: 9", 8, "channel 9 outside 0..7"),
    ("reserved id", "{id: gate, bus", "{id: gateway, bus", 6, "reserved"),
    ("duplicate id", "{id: cannon-1, bus", "{id: gate, bus", 8, "duplicate id 'gate'"),
    ("bad limit", "max_on: 15m", "max_on: -5", 8, "actuators[0].limits.max_on"),
]


@pytest.mark.parametrize(
    ("what", "old", "new", "line", "fragment"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_broken_config_reports_file_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    old: str,
    new: str,
    line: int,
    fragment: str,
) -> None:
    assert old in GOOD_SITE
    rc, err = _check(tmp_path, GOOD_SITE.replace(old, new, 1), capsys)
    assert rc == 1
    expected_prefix = f"{tmp_path / 'site.yaml'}:{line}:"
    hits = [ln for ln in err.splitlines() if ln.startswith(expected_prefix) and fragment in ln]
    assert hits, f"{what}: wanted {expected_prefix} ... {fragment!r} in:\n{err}"


def test_all_mistakes_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD_SITE.replace("port: 1883}", "port: 0, hots: x}").replace(
        "bus: bus1, profile: dust", "bus: nope, profile: dust"
    )
    rc, err = _check(tmp_path, text, capsys)
    assert rc == 1
    assert "mqtt.port" in err and "mqtt.hots" in err and "undefined bus 'nope'" in err
    assert "3 problem(s)" in err


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_site_config

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    text = GOOD_SITE.replace("port: 1883}", f"port: 1883, password: {{file: {secret}}}}}")
    cfg = load_site_config(tmp_path / "a.yaml", text=text)
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)
    monkeypatch.setenv("DG_TEST_PW", "from-env")
    text = GOOD_SITE.replace("port: 1883}", "port: 1883, password: {env: DG_TEST_PW}}")
    cfg = load_site_config(tmp_path / "a.yaml", text=text)
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "from-env"


def test_missing_secret_is_an_error_at_run_time_and_a_note_in_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import load_site_config
    from gateway.configfile import ConfigError

    monkeypatch.delenv("DG_TEST_MISSING", raising=False)
    text = GOOD_SITE.replace("port: 1883}", "port: 1883, password: {env: DG_TEST_MISSING}}")
    with pytest.raises(ConfigError, match=r"a.yaml:2:\d+: mqtt.password: environment variable"):
        load_site_config(tmp_path / "a.yaml", text=text)
    rc, err = _check(tmp_path, text, capsys)
    assert rc == 0 and "note: environment variable DG_TEST_MISSING is not set" in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        (12, 12),
        ("2d", 172800),
        ("1.5", 1.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "m5", "", True, "1h-3m"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_unknown_kind_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _check(tmp_path, "hello: world\n", capsys)
    assert rc == 1 and "cannot tell the kind of file" in err


def test_uplink_devices_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        GOOD_SITE
        + 'uplinks:\n  - {type: hj212, host: 127.0.0.1, port: 8212, mn: "1", pw: x, devices: [gate, ghost]}\n'
    )
    rc, err = _check(tmp_path, text, capsys)
    assert rc == 1
    assert (
        f"{tmp_path / 'site.yaml'}:10:" in err
        and "uplinks[0].devices[1]: undefined device 'ghost'" in err
    )
    rc, err = _check(tmp_path, text.replace(", ghost", ""), capsys)
    assert rc == 0, err


def test_two_uplinks_may_not_share_a_backlog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = '  - {type: hj212, host: 127.0.0.1, port: 8212, mn: "1", pw: x}\n'
    rc, err = _check(tmp_path, GOOD_SITE + "uplinks:\n" + entry + entry, capsys)
    assert rc == 1 and "uplinks[1].host: uplink '127.0.0.1:8212' repeats uplinks[0]" in err
    named = entry.replace("{type", "{name: city, type")
    rc, err = _check(tmp_path, GOOD_SITE + "uplinks:\n" + named + entry, capsys)
    assert rc == 0, err  # the same platform twice, one of them named: two backlogs
    rc, err = _check(tmp_path, GOOD_SITE + "uplinks:\n" + named + named, capsys)
    assert rc == 1 and "uplinks[1].name: uplink 'city' repeats uplinks[0]" in err


def test_a_secret_file_is_read_bounded(tmp_path: Path) -> None:
    """{file: /dev/zero} read the device until the memory ran out."""
    from gateway.config import load_site_config
    from gateway.configfile import ConfigError

    binary = tmp_path / "key.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    for path, message in (
        ("/dev/zero", "secret file /dev/zero is longer than 65536 bytes"),
        (str(binary), f"secret file {binary} is not UTF-8 text"),
    ):
        text = GOOD_SITE.replace("port: 1883}", f"port: 1883, password: {{file: {path}}}}}")
        with pytest.raises(
            ConfigError, match=rf"a.yaml:2:\d+: mqtt.password: {re.escape(message)}"
        ):
            load_site_config(tmp_path / "a.yaml", text=text)
