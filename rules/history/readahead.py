"""Replay input read in a second process, ahead of the engine.

Reading the input (splitting CSV rows and converting cells, or fetching and
decoding InfluxDB's JSON) is about a third of a replay's time, and it does
not depend on the engine. :func:`read_ahead` forks a child that iterates the
readings and sends them over a pipe in batches of :data:`BATCH`, each a
``marshal`` dump of the readings (a 4-byte little-endian length, then the
dump). The parent only unmarshals them, which costs about a fifth of the
parsing, so on a machine with two free cores the engine runs while the next
rows are parsed.

Nothing else changes: the same readings in the same order, and the input
counters (``bad_rows``, ...) the child kept are copied into the parent's
``counters`` at the end. An input error the child meets (one of
:data:`~rules.history.sources.INPUT_ERRORS`: a bad timestamp format, a CSV it
cannot read, an InfluxDB error) is raised in the parent, after the readings
before it, as :class:`~rules.history.sources.ReplayError` with the same text;
any other exception as a RuntimeError carrying the child's traceback. A
child that dies (killed, out of memory) is an error too, never a silently
short replay. ``marshal`` is safe here: the parent only reads its own child.

Forking is only safe on Linux and in a single-threaded process (the
``dustgate replay`` command); :func:`can_read_ahead` says when it is, and
:func:`read_ahead` otherwise returns the readings as they are.
"""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import signal
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from rules.history.sources import INPUT_ERRORS, Reading, ReplayError

BATCH = 512  # readings per message: bigger batches were slower to unmarshal here
_HEAD = 4


def can_read_ahead() -> bool:
    """True where a reader process may be forked: on Linux (macOS system libraries
    are not fork-safe, and Windows has no fork), in a process that runs no other
    thread (a fork copies only the calling thread, so a lock another thread held
    would stay locked in the child)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def read_ahead(
    readings: Iterable[Reading], counters: Counter[str] | None = None
) -> Iterable[Reading]:
    """``readings``, iterated in a forked child; ``counters`` is the Counter the
    input updates (taken over from the child at the end). Returns ``readings``
    unchanged where :func:`can_read_ahead` is false."""
    if not can_read_ahead():
        return readings
    return ReadAhead(readings, counters)


class ReadAhead:
    """The parent's end: an iterator of the child's readings (once)."""

    def __init__(self, readings: Iterable[Reading], counters: Counter[str] | None) -> None:
        self.counters = counters
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (its work is checked through the parent)
            os.close(r)
            _child(readings, counters, w)
        os.close(w)
        self.pid: int | None = pid
        self._rfd = r
        self._batches = self._receive()
        # the rows of each batch are iterated in C: resuming a generator for every
        # reading cost about a tenth of a replay
        self._it = itertools.chain.from_iterable(self._batches)

    def __iter__(self) -> Iterator[Reading]:
        return self._it

    def __next__(self) -> Reading:
        return next(self._it)

    def close(self) -> None:
        """Stop early: the child is killed and reaped (also done when the iterator is
        collected or ends)."""
        self._batches.close()

    def _receive(self) -> Generator[list[Reading], None, None]:
        done = False
        try:
            with os.fdopen(self._rfd, "rb") as pipe:
                read = pipe.read
                loads = marshal.loads
                while True:
                    head = read(_HEAD)
                    body = read(int.from_bytes(head, "little")) if len(head) == _HEAD else b""
                    if not body:
                        break
                    msg = loads(body)
                    if msg[0] == "rows":
                        yield msg[1]
                    elif msg[0] == "end":
                        done = True
                        if self.counters is not None:
                            self.counters.clear()
                            self.counters.update(msg[1])
                        return
                    elif msg[0] == "error":
                        done = True
                        raise ReplayError(msg[1])
                    else:
                        done = True
                        raise RuntimeError(f"the input reader process failed:\n{msg[1]}")
            status = self._reap(kill=False)
            raise ReplayError(f"the input reader process ended early ({_describe(status)})")
        finally:
            if self.pid is not None:
                self._reap(kill=not done)

    def _reap(self, kill: bool) -> int:
        pid, self.pid = self.pid, None
        if pid is None:
            return 0
        if kill:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _child(
    readings: Iterable[Reading], counters: Counter[str] | None, wfd: int
) -> None:  # pragma: no cover - runs in the forked child
    code = 0
    try:
        with os.fdopen(wfd, "wb", buffering=1 << 16) as pipe:

            def send(msg: Any) -> None:
                body = marshal.dumps(msg)
                pipe.write(len(body).to_bytes(_HEAD, "little"))
                pipe.write(body)

            batch: list[Reading] = []
            try:
                for reading in readings:
                    batch.append(reading)
                    if len(batch) >= BATCH:
                        send(("rows", batch))
                        batch = []
            except INPUT_ERRORS as exc:  # the input's error, raised in the parent after the rows
                send(("rows", batch))
                send(("error", str(exc) or type(exc).__name__))
            except Exception:  # a bug: the parent raises it with this traceback
                send(("rows", batch))
                send(("crash", traceback.format_exc()))
            else:
                send(("rows", batch))
                send(("end", dict(counters) if counters is not None else {}))
    except BaseException:
        code = 1  # the parent went away (broken pipe) or we were interrupted
    finally:
        os._exit(code)
