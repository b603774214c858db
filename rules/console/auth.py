"""Who may do what: roles, password hashes, login throttling. Pure except the hasher.

Roles are ordered: ``viewer`` (board, site pages) < ``inspector`` (+ incidents)
< ``operator`` (+ thresholds, overrides) < ``admin`` (+ users). A check asks for
a minimum role.

Passwords are hashed with argon2id (argon2-cffi) at OWASP's minimum memory
cost (19 MiB, t=2, p=1): a login costs ~20 ms of CPU and ~19 MiB for the
moment it runs, instead of the library default's 64 MiB.

:class:`Throttle` limits failed logins per key (the user name and the client
address are both keys): after ``limit`` failures within ``window`` seconds the
key is refused until the oldest of them leaves the window. The clock is an
argument.
"""

from __future__ import annotations

import re
from collections import deque
from enum import IntEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256


class Role(IntEnum):
    VIEWER = 1
    INSPECTOR = 2
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}: expected one of {', '.join(ROLE_NAMES)}"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES = tuple(r.label for r in Role)

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def check_username(name: str) -> str:
    if not USERNAME.match(name):
        raise ValueError("user names are 1-32 of a-z 0-9 _ . - (starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"passwords are {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def verify_password(pw_hash: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False


DUMMY_HASH = _hasher.hash("not-a-user-password")
"""Verified against when the user does not exist, so timing does not tell names."""


class Throttle:
    """Failed attempts per key in a sliding window."""

    def __init__(self, limit: int = 5, window: float = 900.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._fails.get(key)
        if q is None:
            return None
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._fails[key]
            return None
        return q

    def retry_after(self, keys: list[str], now: float) -> float:
        """0 if every key may try now, else the seconds until all may."""
        wait = 0.0
        for key in keys:
            q = self._recent(key, now)
            if q is not None and len(q) >= self.limit:
                wait = max(wait, q[0] + self.window - now)
        return wait

    def failed(self, keys: list[str], now: float) -> None:
        if len(self._fails) >= self.max_keys:  # bounded memory under a spray of names
            for key in list(self._fails)[: self.max_keys // 10]:
                del self._fails[key]
        for key in keys:
            self._fails.setdefault(key, deque(maxlen=self.limit * 4)).append(now)

    def succeeded(self, key: str) -> None:
        self._fails.pop(key, None)
