"""A bounded, append-only, on-disk queue of line-protocol lines (the sink's spool).

Layout of the spool directory::

    seg-000000000001.lp   oldest segment: plain line protocol, one point per line
    seg-000000000002.lp   ...
    seg-000000000007.lp   the active segment (appended to)
    cursor.json           {"segment": 1, "offset": 81234}: first unsent byte

Why this shape:

* Append-only segment files are cheap on an SD card (no rewrite of old data),
  readable with ``cat`` and replayable by hand with ``curl --data-binary``.
* Each append is one ``write`` of whole lines, so a process crash leaves at
  most one torn line at the end of the active segment; it is cut off on open.
  A segment is fsynced when it is closed (rotation, ``close()``).
* The cursor is replaced atomically after each replayed batch.  If we crash
  between a successful write to InfluxDB and the cursor update, that batch is
  sent again after restart: the points carry their own timestamps, so they
  overwrite themselves with identical values (at-least-once, no loss).
* The bound is on bytes: when an append takes the spool over ``max_bytes``
  the oldest whole segments are deleted and their unsent lines counted as
  dropped.  The bound can be exceeded by at most the one segment being
  appended to (segments are ``max_bytes / 16`` by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

_SEGMENT = re.compile(r"^seg-(\d{12})\.lp$")
CURSOR_FILE = "cursor.json"
_READ_CHUNK = 256 * 1024


class SpoolError(OSError):
    """The spool directory cannot be used (permissions, disk full...)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    segment: int
    offset: int


def default_segment_bytes(max_bytes: int) -> int:
    return max(256, min(8 * 1024 * 1024, max(64 * 1024, max_bytes // 16), max_bytes // 4))


class Spool:
    """Not thread-safe: owned by the sink's writer thread."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int | None = None):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes)
        self._sizes: dict[int, int] = {}  # segment id -> bytes on disk
        self._order: list[int] = []
        self._head = Cursor(0, 0)
        self._active_fd: int | None = None
        self._active_id = 0
        self.dropped_lines = 0  # lines deleted by the size bound (since open)

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ids = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _SEGMENT.match(p.name)))
        cursor = self._read_cursor()
        for seg in ids:
            if cursor is not None and seg < cursor.segment:
                self._path(seg).unlink(missing_ok=True)  # consumed before a crash
                continue
            self._order.append(seg)
            self._sizes[seg] = self._path(seg).stat().st_size
        if self._order:
            self._repair_tail(self._order[-1])
            first = self._order[0]
            offset = cursor.offset if cursor is not None and cursor.segment == first else 0
            self._head = Cursor(first, min(offset, self._sizes[first]))
            self._active_id = self._order[-1]
        else:
            self._head = Cursor(0, 0)
            self._active_id = max(ids, default=0)
        self._drop_consumed_head()

    def close(self) -> None:
        self._close_active()

    def _read_cursor(self) -> Cursor | None:
        try:
            data = json.loads((self.dir / CURSOR_FILE).read_text())
            return Cursor(int(data["segment"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cursor(self) -> None:
        tmp = self.dir / (CURSOR_FILE + ".tmp")
        tmp.write_text(json.dumps({"segment": self._head.segment, "offset": self._head.offset}))
        os.replace(tmp, self.dir / CURSOR_FILE)

    def _repair_tail(self, seg: int) -> None:
        """Cut a torn last line (crash in the middle of an append)."""
        path = self._path(seg)
        size = self._sizes[seg]
        if size == 0:
            return
        with path.open("rb+") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            data_end = 0
            chunk = 64 * 1024
            pos = size
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                block = f.read(pos - start)
                idx = block.rfind(b"\n")
                if idx >= 0:
                    data_end = start + idx + 1
                    break
                pos = start
            f.truncate(data_end)
            os.fsync(f.fileno())
        self._sizes[seg] = data_end

    def _path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:012d}.lp"

    # -------------------------------------------------------------- queries

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet replayed."""
        if not self._order:
            return 0
        return sum(self._sizes[s] for s in self._order) - self._head.offset

    def has_data(self) -> bool:
        return self.pending_bytes > 0

    @property
    def segment_count(self) -> int:
        return len(self._order)

    # -------------------------------------------------------------- append

    def append(self, lines: list[str]) -> int:
        """Append whole lines; return how many old lines the size bound dropped."""
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode()
        if self._active_fd is None or self._sizes.get(self._active_id, 0) >= self.segment_bytes:
            self._rotate()
        assert self._active_fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._active_fd, view)
                view = view[n:]
        except OSError as exc:
            msg = f"cannot append to spool {self.dir}: {exc.strerror}"
            raise SpoolError(exc.errno, msg) from exc
        self._sizes[self._active_id] += len(data)
        return self._enforce_bound()

    def _rotate(self) -> None:
        self._close_active()
        self._active_id += 1
        path = self._path(self._active_id)
        try:
            self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            msg = f"cannot create spool segment {path}: {exc.strerror}"
            raise SpoolError(exc.errno, msg) from exc
        self._sizes[self._active_id] = 0
        self._order.append(self._active_id)
        if len(self._order) == 1:
            self._head = Cursor(self._active_id, 0)

    def _close_active(self) -> None:
        if self._active_fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._active_fd)
            os.close(self._active_fd)
            self._active_fd = None

    def _enforce_bound(self) -> int:
        dropped = 0
        while self.pending_bytes > self.max_bytes and len(self._order) > 1:
            seg = self._order[0]
            dropped += self._count_lines(seg, self._head.offset)
            self._delete_head_segment()
        self.dropped_lines += dropped
        return dropped

    def _count_lines(self, seg: int, offset: int) -> int:
        count = 0
        with self._path(seg).open("rb") as f:
            f.seek(offset)
            while block := f.read(1024 * 1024):
                count += block.count(b"\n")
        return count

    def _delete_head_segment(self) -> None:
        seg = self._order.pop(0)
        if seg == self._active_id:
            self._close_active()
        self._sizes.pop(seg, None)
        self._path(seg).unlink(missing_ok=True)
        self._head = Cursor(self._order[0], 0) if self._order else Cursor(0, 0)
        self._write_cursor()

    # -------------------------------------------------------------- replay

    def peek(self, max_lines: int, max_bytes: int = 8 * 1024 * 1024) -> tuple[list[str], Cursor]:
        """Up to ``max_lines`` oldest lines (about ``max_bytes`` at most, but always at
        least one line) and the cursor just after them.  Nothing is consumed."""
        lines: list[str] = []
        cur = self._head
        order = self._order
        idx = order.index(cur.segment) if cur.segment in self._sizes else len(order)
        budget = max_bytes
        while idx < len(order) and len(lines) < max_lines and budget > 0:
            seg = order[idx]
            size = self._sizes[seg]
            pos = cur.offset if seg == cur.segment else 0
            with self._path(seg).open("rb") as f:
                while pos < size and len(lines) < max_lines and budget > 0:
                    f.seek(pos)
                    chunk = f.read(min(size - pos, _READ_CHUNK))
                    while b"\n" not in chunk and pos + len(chunk) < size:  # a very long line
                        chunk += f.read(min(size - pos - len(chunk), _READ_CHUNK))
                    end = chunk.rfind(b"\n") + 1
                    if end == 0:  # a torn tail (cut on open, so not expected): skip it
                        pos = size
                        break
                    for raw in chunk[:end].split(b"\n")[:-1]:
                        if len(lines) >= max_lines or budget <= 0:
                            break
                        lines.append(raw.decode("utf-8", "replace"))
                        pos += len(raw) + 1
                        budget -= len(raw) + 1
            cur = Cursor(seg, pos)
            if pos < size:
                break
            idx += 1
            if idx < len(order) and len(lines) < max_lines and budget > 0:
                cur = Cursor(order[idx], 0)
        return lines, cur

    def commit(self, cursor: Cursor) -> None:
        """Mark everything before ``cursor`` as sent."""
        while self._order and self._order[0] != cursor.segment:
            self._delete_head_segment()
        if not self._order:
            return
        self._head = cursor
        self._drop_consumed_head()
        self._write_cursor()

    def _drop_consumed_head(self) -> None:
        while self._order and self._head.offset >= self._sizes[self._order[0]]:
            seg = self._order[0]
            if seg == self._active_id and self._active_fd is not None:
                # fully replayed active segment: retire it, the next append starts a new one
                self._close_active()
            self._delete_head_segment()
