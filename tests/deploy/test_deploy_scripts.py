"""Shell scripts in deploy/: shellcheck-clean, and install.sh --dry-run walks every step.

install.sh honours DUSTGATE_PREFIX / DUSTGATE_ETC / DUSTGATE_UNIT_DIR /
DUSTGATE_MOSQUITTO_ETC, so the dry runs here point it at a temp tree and can
also prove that a dry run leaves that tree untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "pi" / "install.sh"
OUR_SCRIPTS = {
    DEPLOY / "pi" / "install.sh",
    DEPLOY / "mosquitto" / "make-users.sh",
    DEPLOY / "mosquitto" / "make-test-ca.sh",
}


def shell_scripts() -> list[Path]:
    """Every *.sh and every file with a sh/bash shebang under deploy/."""
    found = set()
    for path in DEPLOY.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".sh":
            found.add(path)
            continue
        with path.open("rb") as f:
            head = f.read(64)
        if head.startswith(b"#!") and (b"sh\n" in head.split(b"\n")[0] + b"\n"):
            found.add(path)
    return sorted(found)


def test_scripts_are_found_and_executable() -> None:
    scripts = set(shell_scripts())
    assert scripts >= OUR_SCRIPTS
    for path in OUR_SCRIPTS:
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert "set -euo pipefail" in path.read_text()


@pytest.mark.parametrize("script", sorted(shell_scripts()), ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip(
            "shellcheck not installed (Debian package: shellcheck; `make deps` installs it)"
        )
    proc = subprocess.run(
        ["shellcheck", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def tree_snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def commands(out: str) -> list[str]:
    """The commands a dry run prints (lines "    + cmd ...")."""
    return [line[6:] for line in out.splitlines() if line.startswith("    + ")]


def dry_run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        DUSTGATE_PREFIX=str(tmp / "opt" / "dustgate"),
        DUSTGATE_ETC=str(tmp / "etc" / "dustgate"),
        DUSTGATE_UNIT_DIR=str(tmp / "units"),
        DUSTGATE_MOSQUITTO_ETC=str(tmp / "etc" / "mosquitto"),
        DUSTGATE_GRAFANA_ETC=str(tmp / "etc" / "grafana"),
        DUSTGATE_GRAFANA_LIB=str(tmp / "var" / "lib" / "grafana"),
    )
    return subprocess.run(
        ["bash", str(INSTALL), "--dry-run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "units").mkdir()
    (tmp_path / "etc" / "mosquitto" / "conf.d").mkdir(parents=True)
    (tmp_path / "etc" / "grafana" / "provisioning").mkdir(parents=True)
    return tmp_path


def test_dry_run_install_mentions_every_step_and_changes_nothing(fake_root: Path) -> None:
    before = tree_snapshot(fake_root)
    proc = dry_run(fake_root, "--rules", "--with-mosquitto", "--with-grafana", str(REPO))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    etc, units = fake_root / "etc" / "dustgate", fake_root / "units"
    expected = [
        "dry run: nothing is changed",
        # 1. packages (installed ones are named as such, missing ones go to apt-get)
        "python3-venv",
        "mosquitto",
        # 2. user and serial-port group
        "system user dustgate in group dialout",
        # 3. venv and the program from this tree
        f"pip install --disable-pip-version-check --no-cache-dir --upgrade {REPO}",
        # 4. configs and secrets
        f"install -d -m 0750 -o root -g dustgate {etc}",
        f"{etc}/secrets.env (mode 0600, owner root:root)",
        # 5. units
        f"deploy/systemd/dustgate-agent.service {units}/dustgate-agent.service",
        f"deploy/systemd/dustgate-rules.service {units}/dustgate-rules.service",
        # 6. broker
        f"{fake_root}/etc/mosquitto/conf.d/dustgate.conf",
        f"deploy/mosquitto/acl {fake_root}/etc/mosquitto/dustgate/acl",
        # 7. Grafana
        f"{fake_root}/etc/grafana/provisioning/datasources/dustgate.yaml",
        f"{fake_root}/etc/grafana/provisioning/dashboards/dustgate.yaml",
        f"{fake_root}/var/lib/grafana/dashboards/dustgate",
        "==> done",
    ]
    for text in expected:
        assert text in out, f"dry run does not mention {text!r}:\n{out}"
    # The venv step shows either creation or reuse.
    assert f"python3 -m venv {fake_root}/opt/dustgate/venv" in out
    # systemctl only where systemd runs; otherwise the technician is told what to type.
    if Path("/run/systemd/system").is_dir():
        assert "systemctl enable dustgate-agent.service dustgate-rules.service" in out
    else:
        assert not [line for line in commands(out) if line.startswith("systemctl")]
        assert "systemd is not running here" in out
    for example in ("site.yaml", "rules.yaml"):
        if (REPO / "examples" / example).exists():
            assert f"examples/{example} {etc}/{example}" in out
    assert tree_snapshot(fake_root) == before


def test_dry_run_never_overwrites_existing_configs(fake_root: Path) -> None:
    etc = fake_root / "etc" / "dustgate"
    etc.mkdir(parents=True)
    for name in ("site.yaml", "rules.yaml", "secrets.env", "rules.env"):
        (etc / name).write_text(f"# the technician's own {name}\n")
    (fake_root / "etc" / "mosquitto" / "conf.d" / "dustgate.conf").write_text("# edited\n")
    proc = dry_run(fake_root, "--with-mosquitto")
    assert proc.returncode == 0, proc.stderr
    for name in ("site.yaml", "rules.yaml", "secrets.env", "rules.env"):
        assert f"keep existing {etc / name}" in proc.stdout
        assert not [c for c in commands(proc.stdout) if str(etc / name) in c]
    assert "keep existing" in proc.stdout and "conf.d/dustgate.conf" in proc.stdout
    # The broker config the technician edited is not copied over either.
    assert not [c for c in commands(proc.stdout) if "conf.d/dustgate.conf" in c]
    for name in ("site.yaml", "rules.yaml", "secrets.env", "rules.env"):
        assert (etc / name).read_text() == f"# the technician's own {name}\n"


def test_dry_run_agent_only_by_default(fake_root: Path) -> None:
    proc = dry_run(fake_root)
    assert proc.returncode == 0, proc.stderr
    assert "mosquitto-clients" not in proc.stdout
    assert "6. local broker" not in proc.stdout
    if Path("/run/systemd/system").is_dir():
        assert "systemctl enable dustgate-agent.service\n" in proc.stdout
    else:
        assert "systemctl enable --now dustgate-agent.service\n" in proc.stdout


def test_dry_run_uninstall_keeps_configs_and_state(fake_root: Path) -> None:
    proc = dry_run(fake_root, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"rm -f {fake_root}/units/dustgate-agent.service" in out
    assert f"rm -f {fake_root}/units/dustgate-rules.service" in out
    assert f"rm -rf {fake_root}/opt/dustgate" in out
    assert "kept configuration" in out
    for line in commands(out):
        assert "etc/dustgate" not in line and "/var/lib/" not in line, line
        assert not line.startswith("userdel"), line


def test_dry_run_purge_removes_configs_and_state(fake_root: Path) -> None:
    proc = dry_run(fake_root, "--uninstall", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert (
        f"rm -rf {fake_root}/etc/dustgate /var/lib/dustgate /var/lib/dustgate-rules" in proc.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purge"], "--purge only goes with --uninstall"),
        (["--bogus"], "unknown option --bogus"),
        (["/nonexistent/tree"], "not found"),
        (["/tmp"], "not a dustgate source tree"),
    ],
)
def test_bad_arguments_are_refused(fake_root: Path, args: list[str], message: str) -> None:
    proc = dry_run(fake_root, *args)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_help_describes_the_options() -> None:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0
    for option in ("--dry-run", "--rules", "--with-mosquitto", "--uninstall", "--purge"):
        assert option in proc.stdout


# --------------------------------------------------------------------------- real runs

# Stand-ins for the commands that would change the machine (packages, users,
# systemd, pip from the network). Each logs its arguments; `install` drops
# -o/-g (no dustgate user here) and otherwise does the real thing.
SHIMS = {
    "apt-get": 'echo "apt-get $*" >>"$SHIM_LOG"',
    "dpkg-query": 'echo "install ok installed"',
    "useradd": 'echo "useradd $*" >>"$SHIM_LOG"; touch "$SHIM_STATE/user"',
    "usermod": 'echo "usermod $*" >>"$SHIM_LOG"; touch "$SHIM_STATE/dialout"',
    "userdel": 'echo "userdel $*" >>"$SHIM_LOG"; rm -f "$SHIM_STATE/user" "$SHIM_STATE/dialout"',
    "getent": '[[ $1 == passwd && -e "$SHIM_STATE/user" ]]',
    "id": 'if [[ -e "$SHIM_STATE/dialout" ]]; then echo "dustgate dialout"; else echo dustgate; fi',
    # A systemd new enough for the backoff drop-in.
    "systemctl": 'if [[ $1 == --version ]]; then echo "systemd 255 (255.4)"; '
    'else echo "systemctl $*" >>"$SHIM_LOG"; fi',
    "python3": '[[ "$1 $2" == "-m venv" ]] || exit 9; mkdir -p "$3/bin"; '
    'printf "#!/bin/sh\\necho \\"pip \\$*\\" >>\\"\\$SHIM_LOG\\"\\n" >"$3/bin/pip"; '
    'ln -s /bin/true "$3/bin/python"; chmod +x "$3/bin/pip"; echo "venv $3" >>"$SHIM_LOG"',
    "install": "args=(); while [[ $# -gt 0 ]]; do case $1 in -o|-g) shift 2;; "
    '*) args+=("$1"); shift;; esac; done; exec /usr/bin/install "${args[@]}"',
}


@pytest.fixture
def shimmed(fake_root: Path) -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("a real (non --dry-run) install.sh run needs root")
    shims = fake_root / "shims"
    state = fake_root / "shim-state"
    shims.mkdir()
    state.mkdir()
    for name, body in SHIMS.items():
        path = shims / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{shims}:{env['PATH']}",
        SHIM_LOG=str(fake_root / "shim.log"),
        SHIM_STATE=str(state),
        DUSTGATE_PREFIX=str(fake_root / "opt" / "dustgate"),
        DUSTGATE_ETC=str(fake_root / "etc" / "dustgate"),
        DUSTGATE_UNIT_DIR=str(fake_root / "units"),
        DUSTGATE_MOSQUITTO_ETC=str(fake_root / "etc" / "mosquitto"),
        DUSTGATE_STATE_ROOT=str(fake_root / "var" / "lib"),
        DUSTGATE_GRAFANA_ETC=str(fake_root / "etc" / "grafana"),
        DUSTGATE_GRAFANA_LIB=str(fake_root / "var" / "lib" / "grafana"),
    )
    return env


def real_run(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        ["bash", str(INSTALL), *args, str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_install_twice_then_uninstall_then_purge(fake_root: Path, shimmed: dict[str, str]) -> None:
    etc, units = fake_root / "etc" / "dustgate", fake_root / "units"
    log = fake_root / "shim.log"

    real_run(shimmed, "--rules", "--with-mosquitto", "--with-grafana")
    first_log = log.read_text()
    assert "useradd --system --user-group" in first_log
    assert "usermod --append --groups dialout dustgate" in first_log
    assert f"pip install --disable-pip-version-check --no-cache-dir --upgrade {REPO}" in first_log
    for unit in ("dustgate-agent.service", "dustgate-rules.service"):
        assert (units / unit).read_text() == (REPO / "deploy" / "systemd" / unit).read_text()
        dropin = units / f"{unit}.d" / "10-restart-backoff.conf"
        assert (
            dropin.read_text() == (REPO / "deploy" / "systemd" / "restart-backoff.conf").read_text()
        )
    secrets = etc / "secrets.env"
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    assert "DUSTGATE_MQTT_PASSWORD" in secrets.read_text()
    assert oct((etc / "rules.env").stat().st_mode & 0o777) == "0o600"
    for example in ("site.yaml", "rules.yaml"):
        if (REPO / "examples" / example).exists():
            assert (etc / example).read_bytes() == (REPO / "examples" / example).read_bytes()
    mosq = fake_root / "etc" / "mosquitto"
    assert (mosq / "conf.d" / "dustgate.conf").read_text() == (
        REPO / "deploy" / "mosquitto" / "mosquitto.conf"
    ).read_text()
    assert (mosq / "dustgate" / "acl").exists() and (mosq / "dustgate" / "passwd").exists()
    grafana = fake_root / "etc" / "grafana" / "provisioning"
    boards = fake_root / "var" / "lib" / "grafana" / "dashboards" / "dustgate"
    for kind in ("datasources", "dashboards"):
        src = REPO / "deploy" / "grafana" / "provisioning" / kind / "dustgate.yaml"
        if src.exists():
            assert (grafana / kind / "dustgate.yaml").read_bytes() == src.read_bytes()
    shipped = sorted(p.name for p in (REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert sorted(p.name for p in boards.iterdir()) == shipped

    # The technician edits the configs; a second run (an upgrade) keeps them
    # and does not create the user or the venv again.
    (etc / "site.yaml").write_text("# edited on site\n")
    secrets.write_text("DUSTGATE_MQTT_PASSWORD=s3cret\n")
    log.write_text("")
    out = real_run(shimmed, "--rules", "--with-mosquitto")
    assert (etc / "site.yaml").read_text() == "# edited on site\n"
    assert secrets.read_text() == "DUSTGATE_MQTT_PASSWORD=s3cret\n"
    second_log = log.read_text()
    assert "useradd" not in second_log and "usermod" not in second_log
    assert "venv " not in second_log  # venv reused ...
    assert "pip install" in second_log  # ... and the program upgraded in it
    assert "apt-get" not in second_log  # every package already there
    assert "user dustgate exists" in out and "venv exists" in out

    # Uninstall: units and program go, configs and state stay.
    state = fake_root / "var" / "lib" / "dustgate"
    state.mkdir(parents=True)
    (state / "outbox.db").write_text("queued readings")
    real_run(shimmed, "--uninstall")
    assert not (units / "dustgate-agent.service").exists()
    assert not (units / "dustgate-agent.service.d").exists()
    assert not (fake_root / "opt" / "dustgate").exists()
    assert (etc / "site.yaml").read_text() == "# edited on site\n"
    assert (state / "outbox.db").exists()

    # Purge: everything, including the user.
    real_run(shimmed, "--uninstall", "--purge")
    assert not etc.exists()
    assert not state.exists()
    assert not (mosq / "dustgate").exists() and not (mosq / "conf.d" / "dustgate.conf").exists()
    assert not boards.exists() and not (grafana / "datasources" / "dustgate.yaml").exists()
    assert "userdel dustgate" in log.read_text()
