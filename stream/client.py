"""The client side: recognition events as Python objects, for users' own code.

    import mfvan

    for event in mfvan.subscribe("tcp://127.0.0.1:5560", stream="cam1"):
        print(event.id, event.stream, event.label, event.confidence, event.apex_iso)

An `Event` (`mfvan.stream.messages.Event`: the message itself, typed) carries what the
recognizer published: its id (a UUIDv7), the stream, the interval (onset, apex and offset
frame indices, and their wall-clock times), the class and every class's probability, its
`confidence` (the label's probability, calibrated on held-out folds), the face square,
the spotter's measurements, the model version, each stage's timestamps (`times`), and the
(onset, apex) crops only when the recognizer runs with `--with-crops`. Malformed
or foreign messages on the socket are skipped and counted in `Subscription.dropped`.

A subscriber whose CURVE key the recognizer refuses is told so: iterating raises
`Refused` naming the endpoint, instead of waiting forever for events that never come. An
endpoint ZeroMQ cannot parse raises `security.EndpointError` at once.

A subscriber that reads slower than events come loses some: the recognizer never waits
for a subscriber (ZeroMQ's PUB drops for a full queue, and memory stays bounded by the
high-water marks, `hwm` here). Events are numbered per stream, so the subscriber counts
what it lost from the gaps: `Subscription.missed`. (A gap at the very end shows once the
next event arrives; numbering restarts from 0 when the recognizer restarts.)
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol, security
from .messages import EVENT_VERSION, Event, iso  # noqa: F401  (the client API)

_REFUSALS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class Refused(ConnectionError):
    """The publisher refused this subscriber's CURVE handshake."""


class Subscription:
    """Iterate for events; `close()` (or leaving a `with` block) ends it."""

    def __init__(
        self,
        endpoint: str,
        stream: str | None = None,
        timeout_s: float | None = None,
        ctx: zmq.Context | None = None,
        curve: dict | None = None,
        hwm: int = 1000,
        face: int | None = None,
    ):
        self.ctx = ctx or zmq.Context.instance()
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE)
        security.keepalive(self.socket)  # back within a second or two of a partition's end
        self._monitor = None
        if curve:  # {"public": ..., "secret": ..., "server": ...} (z85 keys)
            self.socket.curve_publickey = curve["public"]
            self.socket.curve_secretkey = curve["secret"]
            self.socket.curve_serverkey = curve["server"]
            self._monitor = self.socket.get_monitor_socket(_REFUSALS)
        # the topic ends the id (`cam1` is not `cam10`), and events are checked again below
        self.socket.setsockopt(zmq.SUBSCRIBE, protocol.topic(stream) if stream else b"")
        self.stream, self.face = stream, face
        try:
            security.connect(self.socket, endpoint)
        except security.EndpointError:
            self.close()
            raise
        self.dropped = 0  # messages that were not events of ours
        self.missed = 0  # events published but lost on the way (seen as gaps in `seq`)
        self._last: dict[str, int] = {}

    def __iter__(self) -> Iterator[Event]:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        timeout = None if self.timeout_s is None else self.timeout_s * 1000
        while True:
            ready = dict(poller.poll(timeout))
            if not ready:
                return  # timed out: no event within timeout_s
            if self._monitor is not None and self._monitor in ready:
                if recv_monitor_message(self._monitor)["event"] & _REFUSALS:
                    raise Refused(
                        f"{self.endpoint} refused this subscriber's CURVE key (is its public "
                        "key in the recognizer's authorized/subscribers/, and is server.key "
                        "the recognizer's?)"
                    )
            if self.socket not in ready:
                continue
            try:
                msg = protocol.recv(self.socket, zmq.NOBLOCK)
                if msg.kind != "event" or (self.stream and msg.stream != self.stream):
                    continue
                event = Event.from_message(msg)
            except protocol.Malformed:
                self.dropped += 1
                continue
            except zmq.Again:
                continue
            last = self._last.get(msg.stream)
            if last is not None and msg.seq > last + 1:
                self.missed += msg.seq - last - 1
            self._last[msg.stream] = msg.seq
            if self.face is not None and event.face_id != self.face:
                continue  # after the count: another face's event is not a missed one
            yield event

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def subscribe(endpoint: str, stream: str | None = None, timeout_s: float | None = None, **kw):
    """Events published at `endpoint` (optionally one stream's; with `face=N`, only those
    of the face with track id N, which is per stream), as they arrive."""
    return Subscription(endpoint, stream, timeout_s, **kw)
