"""Every use this project makes of aiomqtt's (and, through it, paho's) internals.

aiomqtt's public surface is small; three things we need are not on it. Each
is marked ``INTERNAL`` below, and ``tests/foundation/test_mqttinternals.py``
pins the library behaviour it relies on against a real mosquitto, so an
aiomqtt release that changes one fails a test instead of a site. The aiomqtt
range in ``pyproject.toml`` is the versions those tests ran on.

1. **The paho client under aiomqtt** (``aiomqtt.Client._client``): the agent
   hands readings to paho directly (one ``paho.Client.publish`` per reading
   instead of a task, an event and a timer through aiomqtt's awaitable
   ``publish``), and both sides turn Nagle off on its socket
   (:func:`set_nodelay`): paho leaves it on, and a small command must not
   wait for the ACK of our previous packet.
2. **paho's** ``on_publish`` **callback, which aiomqtt installs**: the agent's
   PUBACKs for the readings it published through paho are taken ahead of
   aiomqtt's handler, which still gets every other one (its own publishes:
   status, state, acks) -- :func:`puback_hook`.
3. **How aiomqtt's message iterator uses its queue**: the queue is made
   through the public ``queue_type`` parameter, called as
   ``queue_type(maxsize=n)``; the iterator takes each message with
   ``queue.get()`` in a task of its own (and drops the message if cancelled
   right after that task took it), and paho has acknowledged a QoS 1 message
   to the broker when it is queued, before anyone reads it. :class:`Inbox`
   relies on all three.

4. **How paho builds MQTT 5 properties**: every packet it reads builds a
   ``paho.mqtt.properties.Properties``, whose ``__init__`` rebuilds the same
   three lookup tables each time and whose ``clear`` tests 27 names with
   ``hasattr``: about a third of the rule engine's CPU per received reading
   (profiled). :func:`lean_paho_properties` makes both use tables built once,
   by paho's own ``__init__`` (so their content stays paho's), and shared:
   paho only reads them.

aiomqtt 3 (drops paho for its own protocol code, manual acknowledgements)
would change each of them: there is no paho client (1, 2), so the agent's
direct publish path and the no-delay socket option need whatever aiomqtt 3
exposes (or its awaitable publish, at the per-message cost measured in
``tests/bench/bench_agent.py``); and with manual acknowledgements (3) a
message is acknowledged when we say so, so the messages still queued when a
session ends would simply be sent again by the broker, and the hand-over of
:meth:`Inbox.take_all` could go.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DRAIN_MAX = 500  # messages taken off the inbox at once (the event loop waits meanwhile)


def lean_paho_properties() -> bool:
    """Make paho's ``Properties`` share its lookup tables (built once, by paho's own
    ``__init__``) instead of rebuilding them for every packet, and ``clear`` look in
    the instance's dict; returns False if already done. Same tables, same
    attributes, same errors: only the per-packet rebuilding goes.

    INTERNAL (4): ``Properties.__init__`` sets ``packetType``, ``types``, ``names``
    and ``properties`` and nothing else; paho never changes those tables."""
    if getattr(Properties, "_dustgate_lean", False):
        return False
    original_init = Properties.__init__
    ref = Properties.__new__(Properties)
    original_init(ref, PacketTypes.PUBLISH)
    types, names, table = ref.types, ref.names, ref.properties
    compressed = tuple(name.replace(" ", "") for name in names)

    def __init__(self: Properties, packetType: int) -> None:
        set_ = object.__setattr__
        set_(self, "packetType", packetType)
        set_(self, "types", types)
        set_(self, "names", names)
        set_(self, "properties", table)

    def clear(self: Properties) -> None:
        d = self.__dict__
        for name in compressed:
            if name in d:
                delattr(self, name)

    Properties.__init__ = __init__  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]
    Properties._dustgate_lean = True  # type: ignore[attr-defined]
    Properties._dustgate_original_init = original_init  # type: ignore[attr-defined]
    return True


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client that ``client`` drives on this event loop.

    INTERNAL (1): ``aiomqtt.Client._client``."""
    return client._client


def set_nodelay(client: aiomqtt.Client) -> bool:
    """Disable Nagle on the client's socket (paho leaves it on): a small command
    must not wait for the ACK of the previous packet (tens of ms with delayed
    ACKs). Returns False if the socket is not reachable (nothing changes).

    INTERNAL (1): the socket of aiomqtt's paho client."""
    paho_c = getattr(client, "_client", None)
    sock = paho_c.socket() if paho_c is not None else None
    if sock is None or not hasattr(sock, "setsockopt"):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


# (message id, reason code) -> True if the PUBACK was ours (taken), else False
PubackTaker = Callable[[int, object], bool]


@contextlib.contextmanager
def puback_hook(client: aiomqtt.Client, take: PubackTaker) -> Iterator[paho.Client]:
    """While inside: every PUBACK goes to ``take`` first; those it does not take
    go on to aiomqtt's own handler. Yields the paho client to publish on.

    INTERNAL (1, 2): paho's ``on_publish``, which aiomqtt set when it connected,
    is swapped for ours and put back on exit."""
    mqtt = paho_client(client)
    theirs = mqtt.on_publish

    def on_publish(
        c: paho.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        if not take(mid, reason) and theirs is not None:
            theirs(c, userdata, mid, reason, props)  # type: ignore[arg-type,call-arg]

    mqtt.on_publish = on_publish
    try:
        yield mqtt
    finally:
        mqtt.on_publish = theirs


class _InboxQueue(asyncio.Queue[aiomqtt.Message]):
    """asyncio.Queue that remembers the message its ``get()`` last handed out until
    the consumer confirms it (:meth:`Inbox.queued`). aiomqtt's iterator gets each
    message in a task of its own; cancelled just after that task took one, it
    drops the message (already acknowledged to the broker)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.handed: aiomqtt.Message | None = None

    async def get(self) -> aiomqtt.Message:
        message = await super().get()
        self.handed = message
        return message


class Inbox:
    """The incoming queue of one aiomqtt client, taken in batches by a busy consumer.

    aiomqtt's iterator (``async for m in client.messages``) creates a task and
    waits on it with ``asyncio.wait`` for every message: about 14-20 us a
    message here, more than paho's own work or our decode. A consumer that is
    behind (the rule engine draining the backlog a reconnect brings) pays that
    per message for nothing: the next messages are already queued. So it waits
    with the iterator only for the first message (a disconnect still ends the
    wait) and takes what is queued behind it directly: :meth:`queued`.

    paho acknowledges a QoS 1 message as it queues it, so the broker will not
    send again what is still queued when the session ends: :meth:`take_all`
    hands it over then, with the message the iterator had taken when it was
    cancelled (aiomqtt drops that one).

    INTERNAL (3): the queue is made by aiomqtt through its public
    ``queue_type`` parameter (called as ``queue_type(maxsize=n)``), so
    :meth:`queue_type` hands it a factory that keeps the queue it makes; the
    iterator's use of ``get()`` and paho's acknowledgement on arrival are
    aiomqtt's and paho's internals. One inbox per client, and every message
    the iterator yields goes through :meth:`queued` (that is how the inbox
    knows the consumer has it).
    """

    def __init__(self) -> None:
        self._queue: _InboxQueue | None = None

    def queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        def make(maxsize: int = 0) -> asyncio.Queue[aiomqtt.Message]:
            self._queue = _InboxQueue(maxsize)
            return self._queue

        # aiomqtt only calls it; a factory does that as well as a class
        return cast("type[asyncio.Queue[aiomqtt.Message]]", make)

    def __len__(self) -> int:
        """Messages queued (received, not yet taken)."""
        return self._queue.qsize() if self._queue is not None else 0

    def queued(self, first: aiomqtt.Message, limit: int = DRAIN_MAX) -> list[aiomqtt.Message]:
        """``first`` (just from the client's iterator: call this before any ``await``),
        then up to ``limit - 1`` messages queued behind it, in order of arrival."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("the inbox was not given to the client (make_client(inbox=...))")
        queue.handed = None  # the consumer has it
        n = min(queue.qsize(), limit - 1)
        if n <= 0:
            return [first]
        take = queue.get_nowait
        return [first, *[take() for _ in range(n)]]

    def take_all(self) -> list[aiomqtt.Message]:
        """Once the session has ended: the message the iterator took but never
        handed over (if it was cancelled in between), then every message queued."""
        queue = self._queue
        if queue is None:
            return []
        out = [] if queue.handed is None else [queue.handed]
        queue.handed = None
        take = queue.get_nowait
        out.extend(take() for _ in range(queue.qsize()))
        return out
