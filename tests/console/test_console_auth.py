"""Roles, passwords, login throttling (a pure state machine: property-tested), the store's
sessions and migrations, `dustgate console adduser`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consolehelpers import write_console
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.console.auth import Role, Throttle, check_username, hash_password, verify_password
from rules.console.store import Store

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["fail", "ok", "ask"]), st.sampled_from(["a", "b"]), st.floats(0, 400)
        ),
        max_size=60,
    )
)
def test_throttle_refuses_exactly_when_limit_failures_are_in_the_window(
    steps: list[tuple[str, str, float]],
) -> None:
    limit, window = 3, 600.0
    th = Throttle(limit=limit, window=window)
    now = 0.0
    fails: dict[str, list[float]] = {"a": [], "b": []}  # the model
    for action, key, dt in steps:
        now += dt
        if action == "fail":
            th.failed([key], now)
            fails[key].append(now)
        elif action == "ok":
            th.succeeded(key)
            fails[key] = []
        recent = [t for t in fails[key] if now - t < window]
        wait = th.retry_after([key], now)
        if len(recent) >= limit:
            oldest_counted = recent[-limit * 4 :][0] if len(recent) > limit * 4 else recent[0]
            assert wait == pytest.approx(oldest_counted + window - now)
            assert wait > 0
        else:
            assert wait == 0.0


def test_roles_are_ordered_and_parsed() -> None:
    assert Role.VIEWER < Role.INSPECTOR < Role.OPERATOR < Role.ADMIN
    assert Role.parse(" Operator ") is Role.OPERATOR
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")
    for bad in ("", "Alice", "a" * 33, "<b>", "-x", "a b"):
        with pytest.raises(ValueError):
            check_username(bad)


def test_password_hashes_verify_and_refuse() -> None:
    h = hash_password("a good long password")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "a good long password")
    assert not verify_password(h, "a good long passworD")
    assert not verify_password("not a hash", "whatever")
    assert not verify_password(h, "x" * 10_000)
    with pytest.raises(ValueError):
        hash_password("short")


def test_store_sessions_end_with_the_user_and_migrations_run_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    store.add_user("otto", "operator", hash_password("a good long password"), 0.0)
    token, csrf = store.create_session("otto", 100.0)
    s = store.session(token, 150.0, idle=3600, max_age=86400)
    assert s is not None and s.user.role == "operator" and s.csrf == csrf
    assert store.session("forged", 150.0, 3600, 86400) is None
    store.set_role("otto", "viewer")  # takes effect on the next request
    assert store.session(token, 160.0, 3600, 86400).user.role == "viewer"  # type: ignore[union-attr]
    store.set_disabled("otto", True)
    assert store.session(token, 170.0, 3600, 86400) is None
    # another package's tables: applied once, recorded per component
    ran = store.migrate("extra", ["CREATE TABLE extra_t (x INTEGER)"])
    again = Store(tmp_path / "c.db").migrate(
        "extra", ["CREATE TABLE extra_t (x INTEGER)", "ALTER TABLE extra_t ADD y TEXT"]
    )
    assert (ran, again) == (1, 1)
    # the session table never holds the token itself
    assert all(token not in str(row) for row in store.query("SELECT * FROM sessions"))


def _adduser(cfg: Path, *args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DUSTGATE_CONSOLE_PASSWORD"}
    if password is not None:
        env["DUSTGATE_CONSOLE_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "console", "adduser", "--config", str(cfg), *args],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_adduser_cli(tmp_path: Path) -> None:
    cfg = write_console(tmp_path)
    ok = _adduser(cfg, "alice", "--role", "admin", password="a good long password")
    assert ok.returncode == 0, ok.stderr
    assert "added alice (admin)" in ok.stdout
    store = Store(tmp_path / "console.db")
    user = store.user("alice")
    assert user is not None and user.role == "admin"
    assert "a good long password" not in user.pw_hash
    again = _adduser(cfg, "alice", "--role", "viewer", password="another long password")
    assert again.returncode == 0 and "updated alice (viewer)" in again.stdout
    assert _adduser(cfg, "Alice<b>", password="a good long password").returncode == 2
    short = _adduser(cfg, "bob", password="short")
    assert short.returncode == 2 and "8-256" in short.stderr
    bad_role = _adduser(cfg, "bob", "--role", "root", password="a good long password")
    assert bad_role.returncode == 2
    assert store.user("bob") is None
    entries = store.audit_entries("user:alice")
    assert [e.detail for e in entries] == ["role viewer (adduser)", "role admin (adduser)"]
    assert time.time() - entries[0].ts < 120
