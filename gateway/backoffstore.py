"""The devices' poll backoff kept on disk, so an agent restart does not reset it.

A dead unit behind a Modbus gateway is probed at growing intervals (``gateway.scheduler``).
Without this file every agent start would probe it again from the shortest delay, and a
gateway that restarts often would keep paying the dead unit's timeouts. One small JSON file
beside the outbox (``device-backoff.json``): ``{device: [failures, wall time of the next
probe]}``. It is written only when a device's backoff changes (a failed probe, a recovery):
for a dead unit that is once per backoff period, rarely enough for an SD card. Written to a
temporary file and renamed, so a crash leaves the old or the new file, never half of one; an
unreadable file is reported and ignored (the backoff starts afresh, as before it existed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "device-backoff.json"


class BackoffStore:
    """Load once, then :meth:`update` as the scheduler reports changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, tuple[int, float]] = self._load()
        self.write_errors = 0

    def _load(self) -> dict[str, tuple[int, float]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); device backoff starts afresh", self.path, exc)
            return {}
        state: dict[str, tuple[int, float]] = {}
        if isinstance(doc, dict):
            for device, entry in doc.items():
                if (
                    isinstance(entry, list)
                    and len(entry) == 2
                    and isinstance(entry[0], int)
                    and not isinstance(entry[0], bool)
                    and entry[0] > 0
                    and isinstance(entry[1], int | float)
                    and math.isfinite(entry[1])
                ):
                    state[str(device)] = (entry[0], float(entry[1]))
        return state

    def resume(self, device: str) -> tuple[int, float] | None:
        """(failures, wall time of the next probe) saved for ``device``, if it was failing."""
        return self.state.get(device)

    def update(self, device: str, failures: int, next_wall: float) -> None:
        """Record a change reported by the scheduler (``failures == 0``: healthy again)."""
        if failures > 0:
            self.state[device] = (failures, next_wall)
        elif self.state.pop(device, None) is None:
            return
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(
                json.dumps({d: [f, round(t, 3)] for d, (f, t) in sorted(self.state.items())}),
                encoding="utf-8",
            )
            os.replace(tmp, self.path)
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors in (1, 10, 100):
                log.warning("%s: cannot save device backoff: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
