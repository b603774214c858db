"""The rule service's state file: what a restart resumes from.

``engine.snapshot()`` (rule phases, timers, cooldowns, held actuators) and
the subscriptions of the persistent MQTT session are written to
``<state_dir>/engine-state.json`` (a relative ``state_dir`` is relative to
the rules file's directory) atomically -- temp file, fsync, rename, fsync of
the directory -- when they changed (checked every ``persist_interval``), at
least every ``persist_max_age`` while counters move, and on shutdown. On
start the file is read back, so a restart in the middle of ``for`` or a
cooldown resumes the timers. A file of an older version is migrated, step by
step (:data:`MIGRATIONS`), never dropped; one written by a newer dustgate is
kept aside as ``engine-state.json.newer`` (a downgrade: nothing here can read
it, and the newer release can again); an unreadable one as
``engine-state.json.bad``; in those two cases the engine starts fresh.

A partitioned engine (``--partition K/N``) keeps ``engine-state.pK-N.json``.
When it starts, it also reads the other state files of the directory (other
partitions', an earlier layout's) and takes, for each rule instance,
actuator and override of its own sites, the entry of the most recently
saved file that has one: after a change of N, the timers of a site that
moved follow it to its new owner (where the engines share the directory).

This module owns the file's format and its reading and writing; the service
builds the document (:meth:`rules.service.service.RulesService.state_snapshot`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rules.core.config import RulesFile
from rules.core.engine import Engine
from rules.core.partition import WHOLE, Partition

log = logging.getLogger("rules.service")

STATE_FILE = "engine-state.json"
# The version of the file; a change of the engine's snapshot (``SNAPSHOT_VERSION``) bumps
# it too. Whoever bumps it adds the step from the previous version to MIGRATIONS.
STATE_VERSION = 1
# version n -> the document as version n + 1 writes it (the engine's part included)
Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}


class NewerState(ValueError):
    """The state file was written by a newer release (its version is above ours)."""


def migrate(doc: Any) -> dict[str, Any]:
    """``doc`` brought to STATE_VERSION through MIGRATIONS; ValueError if it is no state
    document, NewerState if a newer release wrote it."""
    if not isinstance(doc, dict):
        raise ValueError("not a state document")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"state file version {version!r} is not supported")
    if version > STATE_VERSION:
        raise NewerState(f"state file version {version} is newer than this release's")
    while version < STATE_VERSION:
        doc = MIGRATIONS[version](doc)
        version += 1
        doc["version"] = version
    return doc


def state_file_name(part: Partition = WHOLE) -> str:
    """``engine-state.json``, or ``engine-state.pK-N.json`` for partition K/N."""
    return STATE_FILE if part.count == 1 else f"engine-state.p{part.index}-{part.count}.json"


def merge_snapshots(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine snapshot from several state documents: for each rule instance,
    actuator and override, the entry of the most recently saved document that
    has it; the largest command sequence. Pure."""
    docs = sorted(docs, key=lambda d: float(d.get("saved_at", 0)))
    out: dict[str, Any] = {}
    for doc in docs:  # oldest first: newer entries overwrite older ones
        snap = doc["engine"]
        if not out:
            out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in snap.items()}
            continue
        for key in ("rules", "actuators", "overrides", "notify_last"):
            out.setdefault(key, {}).update(snap.get(key, {}))
        out["cmd_seq"] = max(int(out.get("cmd_seq", 0)), int(snap.get("cmd_seq", 0)))
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every file system lets us fsync a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StateFile:
    """Reads the saved engine state and writes it when it changed."""

    def __init__(self, path: Path, max_age: float, part: Partition = WHOLE) -> None:
        self.path = path
        self.part = part
        self.max_age = max_age  # rewrite at least this often while counters move
        self._saved_key: str | None = None
        self._saved_at = -1e18
        self._lock = threading.Lock()

    def load(self, rules_file: RulesFile, now: float) -> tuple[Engine, list[str]]:
        """The engine as saved (or a fresh one) and the subscriptions the saved
        session had."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            others = self._siblings() if self.part.count > 1 else []
            if others:  # a new partition (N changed): take over its sites' timers
                try:
                    engine = Engine.restore(rules_file, merge_snapshots(others), now)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.warning("other partitions' state unreadable (%s): starting fresh", exc)
                    return Engine(rules_file, now), []
                log.info(
                    "no saved state at %s: took over from %d other file(s)", self.path, len(others)
                )
                return engine, []
            log.info("no saved state at %s: starting fresh", self.path)
            return Engine(rules_file, now), []
        except OSError as exc:
            log.warning("cannot read %s (%s): starting fresh", self.path, exc)
            return Engine(rules_file, now), []
        try:
            saved = json.loads(raw)
            version = saved.get("version") if isinstance(saved, dict) else None
            doc = migrate(saved)
            if version != STATE_VERSION:
                log.warning(
                    "state file %s migrated from version %s to %d",
                    self.path,
                    version,
                    STATE_VERSION,
                )
            subs = doc.get("subscriptions", [])
            subscriptions = [s for s in subs if isinstance(s, str)]
            snapshot = doc["engine"]
            if self.part.count > 1:
                snapshot = merge_snapshots([doc, *self._siblings()])
            engine = Engine.restore(rules_file, snapshot, now)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            suffix = ".newer" if isinstance(exc, NewerState) else ".bad"
            bad = self.path.with_name(self.path.name + suffix)
            log.error(
                "saved state %s is unreadable (%s): kept as %s, starting fresh",
                self.path,
                exc,
                bad,
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return Engine(rules_file, now), []
        busy = [
            f"{r}@{s}: {st.phase}" for (r, s), st in engine.states.items() if st.phase != "idle"
        ]
        log.info(
            "restored state from %s (saved %s)%s",
            self.path,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("saved_at", 0))),
            ("; resuming " + ", ".join(busy)) if busy else "",
        )
        return engine, subscriptions

    def _siblings(self) -> list[dict[str, Any]]:
        """The other readable state files of the directory (other partitions',
        an earlier layout's), of this version."""
        out = []
        for path in sorted(self.path.parent.glob("engine-state*.json")):
            if path == self.path:
                continue
            try:
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("version") == STATE_VERSION and "engine" in doc:
                out.append(doc)
        return out

    def bytes_due(self, doc: dict[str, Any], force: bool = False) -> bytes | None:
        """The file bytes if the state changed since the last write (or ``force`` / max
        age), else None. Pure JSON work: may run in a thread."""
        key = json.dumps(doc["engine"], sort_keys=True, separators=(",", ":"))
        now = float(doc["saved_at"])
        stale = now - self._saved_at >= self.max_age
        if not force and key == self._saved_key and not stale:
            return None
        self._saved_key, self._saved_at = key, now
        head = json.dumps({k: v for k, v in doc.items() if k != "engine"}, sort_keys=True)
        return f'{head[:-1]}, "engine": {key}}}'.encode()

    def persist(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` if it changed; an error is logged and retried next time.
        May run in a thread."""
        with self._lock:  # a cancelled save may still run while we shut down
            data = self.bytes_due(doc)
            if data is not None:
                try:
                    write_atomic(self.path, data)
                except OSError as exc:
                    self._saved_key = None  # try again next time
                    log.error("cannot save state to %s: %s", self.path, exc)

    def save(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` now (blocking; used on shutdown)."""
        with self._lock:
            data = self.bytes_due(doc, force=True)
            assert data is not None
            write_atomic(self.path, data)
