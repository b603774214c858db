"""The systemd units: accepted by systemd itself, and carrying the settings we rely on.

``systemd-analyze verify`` also checks that ExecStart= points at an
executable, which /opt/dustgate/venv/bin/dustgate is not on a build machine:
we verify a copy whose commands point at an existing binary, everything else
byte-identical, and fail on any complaint about our files (unknown keys and
sections, bad values). Unknown keys are only warnings for systemd, with exit
status 0, so the output is what is checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "deploy" / "systemd"
UNITS = ["dustgate-agent.service", "dustgate-rules.service", "dustgate-rules@.service"]
INSTANCE = "dustgate-rules@0.service"  # systemd verifies an instance, not a template
DUSTGATE = "/opt/dustgate/venv/bin/dustgate"
BACKOFF_KEYS = {"RestartSteps", "RestartMaxDelaySec"}  # systemd >= 254


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values}"
    return values[0]


def systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def stage(tmp: Path, with_backoff: bool = False) -> list[Path]:
    """Copies of the units with the dustgate binary swapped for an existing one."""
    true_bin = shutil.which("true") or "/bin/true"
    staged = []
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        assert DUSTGATE in text
        target = tmp / (INSTANCE if name.endswith("@.service") else name)
        target.write_text(text.replace(DUSTGATE, true_bin))
        if with_backoff:
            dropin = tmp / f"{name}.d"
            dropin.mkdir()
            shutil.copy(SYSTEMD_DIR / "restart-backoff.conf", dropin / "10-restart-backoff.conf")
        staged.append(target)
    return staged


def verify(paths: list[Path]) -> tuple[int, list[str]]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def complaints_about(lines: list[str], tmp: Path) -> list[str]:
    names = [str(tmp), *UNITS, INSTANCE]
    return [line for line in lines if any(n in line for n in names)]


def test_verify_catches_a_bad_unit_here(tmp_path: Path) -> None:
    """The checker itself works in this environment (so a clean verify means something)."""
    (tmp_path / UNITS[0]).write_text(
        "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\nRestartt=always\n"
    )
    _, lines = verify([tmp_path / UNITS[0]])
    assert any("Unknown key" in line and "Restartt" in line for line in lines), lines


def test_units_verify_cleanly(tmp_path: Path) -> None:
    rc, lines = verify(stage(tmp_path))
    ours = complaints_about(lines, tmp_path)
    assert ours == [], "\n".join(ours)
    if rc != 0:
        pytest.skip(f"systemd-analyze verify failed for reasons outside our units: {lines}")


def test_backoff_dropin_is_clean_or_only_needs_a_newer_systemd(tmp_path: Path) -> None:
    _, lines = verify(stage(tmp_path, with_backoff=True))
    ours = complaints_about(lines, tmp_path)
    if systemd_version() >= 254:
        assert ours == [], "\n".join(ours)
    else:
        # Exactly the two keys newer systemd adds, which is why install.sh only
        # installs the drop-in on systemd >= 254.
        unknown = {m.group(1) for line in ours if (m := re.search(r"Unknown key '(\w+)'", line))}
        assert unknown == BACKOFF_KEYS, "\n".join(ours)
        assert all("Unknown key" in line for line in ours), "\n".join(ours)


def test_hardening_exposure_is_low(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    if systemd_version() < 250:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    for path in stage(tmp_path):
        proc = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
        assert match, proc.stdout + proc.stderr
        # 0 = fully locked down, 10 = no sandboxing; an agent that must reach
        # serial ports and the network lands near 2.
        assert float(match.group(1)) <= 2.5, proc.stdout


def test_agent_unit_settings() -> None:
    unit = parse_unit(SYSTEMD_DIR / "dustgate-agent.service")
    svc = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "WatchdogSec") == "30"
    assert one(unit, "Service", "User") == "dustgate"
    assert one(unit, "Service", "SupplementaryGroups") == "dialout"
    assert one(unit, "Service", "StateDirectory") == "dustgate"
    assert one(unit, "Service", "ExecStartPre") == f"{DUSTGATE} check /etc/dustgate/site.yaml"
    assert one(unit, "Service", "ExecStart") == f"{DUSTGATE} agent --config /etc/dustgate/site.yaml"
    # Serial ports must stay reachable: no PrivateDevices, and an allow-list
    # that covers USB adapters and the Pi's own UARTs.
    assert svc.get("PrivateDevices", ["no"]) == ["no"]
    allowed = {v.split()[0] for v in svc["DeviceAllow"] if v.split()[1] == "rw"}
    assert {"char-ttyUSB", "char-ttyAMA", "char-ttyS"} <= allowed


def test_rules_unit_settings() -> None:
    unit = parse_unit(SYSTEMD_DIR / "dustgate-rules.service")
    assert one(unit, "Service", "User") == "dustgate"
    assert one(unit, "Service", "StateDirectory") == "dustgate-rules"
    assert one(unit, "Service", "ExecStartPre") == f"{DUSTGATE} check /etc/dustgate/rules.yaml"
    assert (
        one(unit, "Service", "ExecStart") == f"{DUSTGATE} rules --config /etc/dustgate/rules.yaml"
    )
    assert "SupplementaryGroups" not in unit["Service"]  # no serial ports for the engine
    assert one(unit, "Service", "PrivateDevices") == "yes"
    # The engine's own MQTT password overrides the site's when both run on one board.
    assert unit["Service"]["EnvironmentFile"] == [
        "-/etc/dustgate/secrets.env",
        "-/etc/dustgate/rules.env",
    ]


def test_partitioned_rules_unit_is_the_rules_unit_with_a_partition() -> None:
    """dustgate-rules@K runs partition K of DUSTGATE_PARTITIONS; everything else
    (user, secrets, hardening, restarts, state directory) as the single engine."""
    single = parse_unit(SYSTEMD_DIR / "dustgate-rules.service")
    part = parse_unit(SYSTEMD_DIR / "dustgate-rules@.service")
    assert one(part, "Service", "ExecStart") == (
        f"{DUSTGATE} rules --config /etc/dustgate/rules.yaml --partition %i/${{DUSTGATE_PARTITIONS}}"
    )
    for section, keys in single.items():
        for key, values in keys.items():
            if (section, key) in {("Service", "ExecStart"), ("Unit", "Description")}:
                continue
            assert part[section][key] == values, (section, key)
    assert "%i" in one(part, "Unit", "Description")
    assert one(part, "Install", "DefaultInstance") == "0"


@pytest.mark.parametrize("name", UNITS)
def test_common_unit_policy(name: str) -> None:
    unit = parse_unit(SYSTEMD_DIR / name)
    for key, value in {
        "Restart": "always",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert one(unit, "Service", key) == value, key
    # Secrets from root-only files; the optional "-" lets the service start without them.
    assert unit["Service"]["EnvironmentFile"][0] == "-/etc/dustgate/secrets.env"
    assert float(one(unit, "Service", "RestartSec")) > 0
    # An unattended gateway must keep retrying after repeated failures.
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def exec_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for name in UNITS:
        unit = parse_unit(SYSTEMD_DIR / name)
        for key in ("ExecStartPre", "ExecStart"):
            for value in unit["Service"][key]:
                argv = value.split()
                assert argv[0] == DUSTGATE, value
                lines.append((f"{name}:{key}", argv[1:]))
    return lines


@pytest.mark.parametrize(("where", "args"), exec_lines(), ids=[w for w, _ in exec_lines()])
def test_unit_commands_are_accepted_by_the_cli(where: str, args: list[str]) -> None:
    """Every option a unit passes exists in `dustgate SUBCOMMAND --help`."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", args[0], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    if "not available in this build" in proc.stderr:
        pytest.skip(f"{where}: `dustgate {args[0]}` is not implemented yet ({proc.stderr.strip()})")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for option in (a for a in args[1:] if a.startswith("-")):
        assert option in proc.stdout, f"{where}: `dustgate {args[0]}` has no {option}"
