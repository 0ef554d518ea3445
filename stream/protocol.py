"""The wire protocol between mfvan's stages: multipart ZeroMQ messages
`[topic, header, *buffers]`.

- topic: the stream id, UTF-8 bytes, so a SUB socket can subscribe to one camera.
- header: a msgpack map, versioned: `v` (VERSION), `kind` (frame | pair | event | eos),
  `stream` (equal to the topic), `seq` (per stream and kind, from 0), `buffers` (for each
  buffer its `shape`, `dtype` and pixel `format`), and any other fields a stage adds:
  timestamps in ns (`t_capture` and `t_ingest` on the wall clock, `t_media` the frame's
  media time, and each stage's own), frame indices, `key_frame`, event fields.
- buffers: raw array memory, sent without copying (`copy=False`); the receiver wraps each
  in a read-only NumPy array over the received frame, without copying either.

`decode` refuses anything else with `Malformed` and a reason (a foreign or garbled
header, another version, a missing field, a buffer whose size does not match its shape
and dtype); a stage drops such a message, counts it, and goes on. `send` never blocks:
when the peer's high-water mark is reached the message is dropped and `send` returns
False, so a slow consumer costs the producer drops, never unbounded memory.

Imports nothing of this project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

VERSION = 1
KINDS = ("frame", "pair", "event", "eos")
DTYPES = ("uint8", "uint16", "float16", "float32", "float64", "int32", "int64")
RESERVED = ("v", "kind", "stream", "seq", "buffers")
_DTYPES = {name: np.dtype(name) for name in DTYPES}


class Malformed(ValueError):
    """A message that is not ours or not whole; `reason` is a short label for metrics."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Message:
    kind: str
    stream: str
    seq: int
    fields: dict = field(default_factory=dict)  # everything else in the header
    arrays: list = field(default_factory=list)  # NumPy arrays (read-only views on receipt)


def encode(kind: str, stream: str, seq: int, arrays=(), formats=None, **fields) -> list:
    """The message's frames. `formats`: a pixel format per array ("grey", "rgb24", ...)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    clash = set(fields) & set(RESERVED)
    if clash:
        raise ValueError(f"header fields {sorted(clash)} are reserved")
    formats = list(formats or [""] * len(arrays))
    buffers, specs = [], []
    for array, fmt in zip(arrays, formats, strict=True):
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(f"dtype {array.dtype} cannot be sent; use one of {DTYPES}")
        specs.append({"shape": list(array.shape), "dtype": array.dtype.name, "format": fmt})
        buffers.append(array)
    header = {"v": VERSION, "kind": kind, "stream": stream, "seq": int(seq), "buffers": specs}
    header.update(fields)
    return [stream.encode(), msgpack.packb(header, use_bin_type=True), *buffers]


def send(
    socket: zmq.Socket, kind: str, stream: str, seq: int, arrays=(), wait_ms: int = 0, **fields
) -> bool:
    """Send without copying the arrays, waiting at most `wait_ms` for room (default: not
    at all); False when the message was dropped because the peers' queues are full (or no
    peer is connected yet)."""
    frames = encode(kind, stream, seq, arrays, **fields)
    try:
        _send_parts(socket, frames)
        return True
    except zmq.Again:
        pass  # the queue is full: wait for room only now (a poll costs ~10 us)
    if not wait_ms or not socket.poll(wait_ms, zmq.POLLOUT):
        return False
    try:
        _send_parts(socket, frames)
    except zmq.Again:
        return False
    return True


def _send_parts(socket: zmq.Socket, frames: list) -> None:
    """Send without blocking: topic and header copied (small: cheaper than tracking them),
    the buffers without a copy. Only the first part can fail (zmq.Again): ZeroMQ takes a
    multipart message whole or not at all. Half the cost of `send_multipart(copy=False)`,
    which wraps every part in a tracked frame (6 us against 12 us per message)."""
    last = len(frames) - 1
    for i, part in enumerate(frames):
        flags = zmq.NOBLOCK | (zmq.SNDMORE if i < last else 0)
        socket.send(part, flags, copy=i < 2)


def recv_parts(socket: zmq.Socket, flags: int = 0) -> list:
    """One multipart message: topic and header as bytes (copied: small), the buffers as
    `zmq.Frame`s (not copied). Cheaper than `recv_multipart(copy=False)`, which wraps every
    part (7 us against 16 us per message). Raises zmq.Again with NOBLOCK and nothing there."""
    parts = [socket.recv(flags, copy=True)]
    while socket.getsockopt(zmq.RCVMORE):
        parts.append(socket.recv(copy=len(parts) < 2))
    return parts


def decode(frames) -> Message:
    """A received multipart message (bytes or `zmq.Frame`s, as `recv_parts` or
    `recv_multipart` give them) as a `Message`; raises `Malformed` when it is not a
    whole message of ours."""
    if len(frames) < 2:
        raise Malformed("malformed", f"{len(frames)} frame(s), need at least topic and header")
    topic, raw = (_bytes(f) for f in frames[:2])
    try:
        header = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several types for garbage
        raise Malformed("malformed", f"header is not msgpack ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise Malformed("malformed", "header is not a map")
    if header.get("v") != VERSION:
        raise Malformed("version", f"protocol version {header.get('v')!r}, expected {VERSION}")
    missing = [k for k in RESERVED if k not in header]
    if missing:
        raise Malformed("malformed", f"header lacks {missing}")
    if header["kind"] not in KINDS:
        raise Malformed("malformed", f"unknown kind {header['kind']!r}")
    if topic != str(header["stream"]).encode():
        raise Malformed("malformed", "topic and header stream differ")
    specs = header["buffers"]
    if not isinstance(specs, list) or len(specs) != len(frames) - 2:
        raise Malformed("malformed", f"header lists {specs!r} buffers, got {len(frames) - 2}")
    arrays = [_array(f, spec) for f, spec in zip(frames[2:], specs, strict=True)]
    fields = {k: v for k, v in header.items() if k not in RESERVED}
    return Message(header["kind"], header["stream"], int(header["seq"]), fields, arrays)


def recv(socket: zmq.Socket, flags: int = 0) -> Message:
    """Receive one message without copying its buffers; raises `Malformed` (the message is
    consumed) or `zmq.Again` (with NOBLOCK and nothing there)."""
    return decode(recv_parts(socket, flags))


def _bytes(frame) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _array(frame, spec) -> np.ndarray:
    try:
        shape = tuple(int(n) for n in spec["shape"])
        dtype = _DTYPES[spec["dtype"]]
    except (KeyError, TypeError, ValueError):
        raise Malformed("malformed", f"bad buffer spec {spec!r}") from None
    if any(n < 0 for n in shape):
        raise Malformed("malformed", f"bad buffer spec {spec!r}")
    buffer = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    expected = math.prod(shape) * dtype.itemsize
    if buffer.nbytes != expected:
        raise Malformed(
            "malformed", f"buffer of {buffer.nbytes} bytes for shape {shape} {spec['dtype']}"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return array
