"""The wire protocol between mfvan's stages: multipart ZeroMQ messages
`[topic, header, *buffers]`.

- topic: the stream id, UTF-8 bytes, then a NUL byte (`topic(stream)`), so a SUB socket
  subscribes to one camera exactly: ZeroMQ matches topics by prefix, and without the
  terminator a subscription to `cam1` also received `cam10` and `cam1-0`. (Version 2;
  version 1 sent the bare id.) A stream id holds no NUL. The watch kinds (`WATCH_KINDS`:
  a spot stage's `status` and `preview` of each stream, for the web view) put their kind
  first, `status:cam1\0`, so that a subscriber asks for one kind of one camera, and the
  publisher (an XPUB socket, `mfvan.stream.watch`) sees what is asked for.
- header: a msgpack map, versioned: `v` (VERSION), `kind` (frame | pair | event | eos |
  status | preview),
  `stream` (equal to the topic), `seq` (per stream and kind, from 0), `buffers` (for each
  buffer its `shape`, `dtype` and pixel `format`), and any other fields a stage adds:
  timestamps in ns (`t_capture` and `t_ingest` on the wall clock, `t_media` the frame's
  media time, and each stage's own), frame indices, `key_frame`, event fields.
- buffers: raw array memory, sent without copying (`copy=False`); the receiver wraps each
  in a read-only NumPy array over the received frame, without copying either.

`decode` refuses anything else with `Malformed` and a reason (a foreign or garbled
header, another version, a missing field, a buffer whose size does not match its shape
and dtype, and anything its kind's schema forbids: `SCHEMAS` says, per kind, the type of
each header field, which are required, and the buffers' count, dtype, rank and sizes; the
schemas are built from the typed messages of `mfvan.stream.messages`, where each field is
declared once);
a stage drops such a message, counts it, and goes on. So no header or buffer a peer can
send reaches a stage's logic with a type or shape it does not expect. Limits: a frame is
at most MAX_SIDE px a side, a crop MIN_CROP to MAX_CROP, a header MAX_HEADER bytes, a
stream id MAX_STREAM_ID characters; `MAX_MESSAGE` (the largest legal frame) is what
receiving sockets set as ZMQ_MAXMSGSIZE, so a larger part never even reaches memory
(ZeroMQ drops the connection that sent it). `send` never blocks:
when the peer's high-water mark is reached the message is dropped and `send` returns
False, so a slow consumer costs the producer drops, never unbounded memory.

Imports nothing of this project: `mfvan.stream.messages` fills `SCHEMAS` (the package
imports it before any of its modules runs).
"""

from __future__ import annotations

import functools
import math
import reprlib
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

VERSION = 2
WATCH_KINDS = ("status", "preview")  # a spot stage's view of its streams (mfvan.stream.watch)
KINDS = ("frame", "pair", "event", "eos", *WATCH_KINDS)
DTYPES = ("uint8", "uint16", "float16", "float32", "float64", "int32", "int64")
RESERVED = ("v", "kind", "stream", "seq", "buffers")
_DTYPES = {name: np.dtype(name) for name in DTYPES}
# dtype -> its name: NumPy computes `dtype.name` in Python (8 us, a quarter of a frame's
# whole encoding); a dict lookup takes 0.1 us
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
MAX_SIDE = 4096  # px, a frame's height or width (4K UHD is 3840 x 2160)
MIN_SIDE = 16  # px: smaller holds no face
MIN_CROP, MAX_CROP = 16, 512  # px, the side of a pair's square face crops
MAX_HEADER = 64 * 1024  # bytes of msgpack
MAX_STREAM_ID = 128  # characters
MAX_MESSAGE = MAX_SIDE * MAX_SIDE * 3  # bytes in one part: the largest legal RGB frame
MAX_FLOW = 64.0  # px: a pair's flow beyond this is not a face's motion (nor inf, nan)
MAX_CLIP = 2000  # frames of face crops a pair or an event may carry (10 s at 200 fps)
MAX_DEPTH = 8  # levels of maps and lists in a pass-through field (ground truth has 3)
MAX_ITEMS = 1000  # values in a pass-through field, all levels together


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
    buffers, specs, shapes, names = [], [], [], []
    for array, fmt in zip(arrays, formats, strict=True):
        array = np.ascontiguousarray(array)
        name = _NAMES.get(array.dtype)
        if name is None:
            raise ValueError(f"dtype {array.dtype} cannot be sent; use one of {DTYPES}")
        specs.append({"shape": list(array.shape), "dtype": name, "format": fmt})
        shapes.append(array.shape)
        names.append(name)
        buffers.append(array)
    header = {"v": VERSION, "kind": kind, "stream": stream, "seq": int(seq), "buffers": specs}
    header.update(fields)
    # what the receiver would refuse is refused here, with the same words
    _check_stream(stream)
    _check_header(kind, header)
    _check_buffers(kind, tuple(shapes), tuple(names))
    if SCHEMAS[kind].flow and len(buffers) >= 3:
        _check_flow(kind, buffers[2])
    return [topic(stream, kind), msgpack.packb(header, use_bin_type=True), *buffers]


def topic(stream: str, kind: str | None = None) -> bytes:
    """The topic frame of `stream`'s messages, and what a SUB socket subscribes to for
    exactly that stream; for a watch kind (`WATCH_KINDS`), exactly that kind of it."""
    if kind in WATCH_KINDS:
        return f"{kind}:{stream}".encode() + b"\0"
    return stream.encode() + b"\0"


def send(
    socket: zmq.Socket, kind: str, stream: str, seq: int, arrays=(), wait_ms: int = 0, **fields
) -> bool:
    """Send without copying the arrays, waiting at most `wait_ms` for room (default: not
    at all); False when the message was dropped because the peers' queues are full (or no
    peer is connected yet)."""
    frames = encode(kind, stream, seq, arrays, **fields)
    # with a wait, ask first (`zmq_poll`: 1.7 us, no state kept): a full queue's zmq.Again
    # costs 8 us to raise, and `socket.poll` 4-5 us to set up a Poller, at every message
    # of a producer that outruns its consumer
    if wait_ms and not zmq.zmq_poll([(socket, zmq.POLLOUT)], wait_ms):
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


# ----------------------------------------------------------------------------- schemas


def _int(v) -> bool:
    return type(v) is int  # not bool, not float


@dataclass(frozen=True)
class Schema:
    """What a kind of message may hold. `fields`: header field -> its type check (a field
    not named here may be anything: producers add their own); `required`: fields it must
    have; `buffers`: the counts of buffers allowed; `image`: (dtype, ranks, least side,
    most side, square) of every image buffer; `same_shape`: all images alike; `flow`: a
    buffer after the images may be their flow, (S, S, 2) float16 or float32 for S x S
    images, with every value finite and within MAX_FLOW px."""

    fields: dict
    required: tuple = ()
    buffers: tuple = (0,)
    ranks: tuple = (2,)
    sides: tuple = (MIN_SIDE, MAX_SIDE)
    square: bool = False
    same_shape: bool = False
    flow: bool = False
    clip: int = 0  # with this many buffers, the last is a clip: (N, S, S) uint8 crops
    consistent: object = None  # header -> None, or why its fields do not go together


# kind -> its Schema, built from the typed messages' declared fields (`mfvan.stream.messages`,
# which the package imports first: importing this module imports it)
SCHEMAS: dict[str, Schema] = {}


def _check_stream(stream) -> None:
    # printable: an id goes into log lines, MQTT topics, file names (no NUL, CR, LF, ...)
    if type(stream) is not str or not 0 < len(stream) <= MAX_STREAM_ID or not stream.isprintable():
        raise Malformed(
            "schema", f"stream id {_show(stream)} is not 1-{MAX_STREAM_ID} printable characters"
        )


_SHOW = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 3, 40, 40, 4, 4


def _show(value) -> str:
    """A peer's value, short, for an error message (a full repr of 1,000 nested lists
    is a RecursionError, of a 60 KB string a log flood)."""
    return _SHOW.repr(value)


def plain(value) -> str | None:
    """None when `value` is what JSON can say as it is: maps with string keys, lists,
    strings, finite numbers, booleans and nil, at most MAX_DEPTH levels and MAX_ITEMS values
    deep; else why not. Every pass-through field (a field a kind does not declare, or one
    declared as a map, such as a synthetic source's ground truth) must be plain, so that
    every consumer (JSON lines, the event store, webhooks, MQTT, the web view) can render
    any event that decodes: msgpack also carries bytes, extension types and timestamps,
    and nests 1,000 levels deep."""
    todo, items = [(value, 1)], 0
    while todo:
        v, depth = todo.pop()
        items += 1
        if items > MAX_ITEMS:
            return f"more than {MAX_ITEMS} values"
        if v is None or type(v) in (bool, int, str):
            continue
        if type(v) is float:
            if not math.isfinite(v):
                return f"a number that is not finite ({v})"
            continue
        if type(v) not in (dict, list):
            return f"{type(v).__name__}, which JSON cannot hold"
        if depth >= MAX_DEPTH:
            return f"more than {MAX_DEPTH} levels"
        if type(v) is dict:
            if any(type(k) is not str for k in v):
                return "a map key that is not a string"
            todo.extend((x, depth + 1) for x in v.values())
        else:
            todo.extend((x, depth + 1) for x in v)
    return None


def _check_header(kind: str, header: dict) -> None:
    schema = SCHEMAS[kind]
    for key, value in header.items():  # what a kind does not declare passes through
        if key not in schema.fields and key not in RESERVED:
            why = plain(value) if type(key) is str else "its name is not a string"
            if why:
                raise Malformed("schema", f"{kind} field {_show(key)} holds {why}")
    missing = [k for k in schema.required if k not in header]
    if missing:
        raise Malformed("schema", f"a {kind} lacks {missing}")
    for key, ok in schema.fields.items():
        if key in header and not ok(header[key]):
            value = header[key]
            why = f" ({plain(value)})" if type(value) is dict and plain(value) else ""
            raise Malformed("schema", f"{kind} field {key!r} cannot be {_show(value)}{why}")
    why = schema.consistent(header) if schema.consistent else None
    if why:
        raise Malformed("schema", f"a {kind}'s {why}")


@functools.lru_cache(maxsize=256)
def _check_buffers(kind: str, shapes: tuple, dtypes: tuple) -> None:
    """Raises Malformed (which is not cached) when `kind` cannot have these buffers.
    Cached: a stream sends the same shapes again and again (0.2 us a hit, 2.4 a check)."""
    schema = SCHEMAS[kind]
    if len(shapes) not in schema.buffers:
        raise Malformed("schema", f"a {kind} has {len(shapes)} buffers, not {schema.buffers}")
    if schema.clip and len(shapes) == schema.clip:  # the clip, last
        side = shapes[0][0] if shapes[0] else 0
        shape, dtype = shapes[-1], dtypes[-1]
        if (
            not (len(shape) == 3 and shape[1:] == (side, side) and 1 <= shape[0] <= MAX_CLIP)
            or dtype != "uint8"
        ):
            want = f"(1..{MAX_CLIP}, {side}, {side}) uint8"
            raise Malformed("schema", f"a {kind}'s clip is {dtype} {shape}, not {want}")
        shapes, dtypes = shapes[:-1], dtypes[:-1]
    if schema.flow and len(shapes) == 3:  # the images' flow, last
        (side, *_), shape, dtype = shapes[0], shapes[2], dtypes[2]
        if shape != (side, side, 2) or dtype not in ("float16", "float32"):
            want = f"({side}, {side}, 2) float16 or float32"
            raise Malformed("schema", f"a {kind}'s flow is {dtype} {shape}, not {want}")
        shapes, dtypes = shapes[:2], dtypes[:2]
    least, most = schema.sides
    for shape, dtype in zip(shapes, dtypes, strict=True):
        if dtype != "uint8":
            raise Malformed("schema", f"a {kind}'s image is {dtype}, not uint8")
        if len(shape) not in schema.ranks or (len(shape) == 3 and shape[2] != 3):
            raise Malformed("schema", f"a {kind}'s image has shape {shape}")
        if not all(least <= n <= most for n in shape[:2]):
            raise Malformed("schema", f"a {kind}'s image of {shape} is not {least}..{most} px")
        if schema.square and shape[0] != shape[1]:
            raise Malformed("schema", f"a {kind}'s crop of {shape} is not square")
    if schema.same_shape and len(set(shapes)) > 1:
        raise Malformed("schema", f"a {kind}'s images differ in shape: {shapes}")


def _check_flow(kind: str, flow: np.ndarray) -> None:
    """A flow's values: finite and at most MAX_FLOW px (a peer's inf or 1e30 would reach
    the network's input)."""
    if not np.isfinite(flow).all() or np.abs(flow).max(initial=0) > MAX_FLOW:
        raise Malformed("schema", f"a {kind}'s flow is not finite or exceeds {MAX_FLOW} px")


def decode(frames) -> Message:
    """A received multipart message (bytes or `zmq.Frame`s, as `recv_parts` or
    `recv_multipart` give them) as a `Message`; raises `Malformed` when it is not a
    whole message of ours."""
    if len(frames) < 2:
        raise Malformed("malformed", f"{len(frames)} frame(s), need at least topic and header")
    topic_frame, raw = _bytes(frames[0]), _bytes(frames[1])
    if len(raw) > MAX_HEADER:
        raise Malformed("malformed", f"header of {len(raw)} bytes, at most {MAX_HEADER}")
    try:
        header = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several types for garbage
        raise Malformed("malformed", f"header is not msgpack ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise Malformed("malformed", "header is not a map")
    if header.get("v") != VERSION:
        raise Malformed("version", f"protocol version {_show(header.get('v'))}, expected {VERSION}")
    missing = [k for k in RESERVED if k not in header]
    if missing:
        raise Malformed("malformed", f"header lacks {missing}")
    if header["kind"] not in KINDS:
        raise Malformed("malformed", f"unknown kind {_show(header['kind'])}")
    stream, seq, kind = header["stream"], header["seq"], header["kind"]
    _check_stream(stream)
    if topic_frame != topic(stream, kind):
        raise Malformed("malformed", "topic and header stream differ")
    if not _int(seq) or not 0 <= seq < 2**63:  # a count SQLite (and every consumer) can hold
        raise Malformed("schema", f"seq {_show(seq)} is not a count")
    specs = header["buffers"]
    if type(specs) is not list or len(specs) != len(frames) - 2:
        raise Malformed("malformed", f"header lists {_show(specs)} buffers, got {len(frames) - 2}")
    shapes, names = [], []
    for spec in specs:
        shape, name = _spec(spec)
        shapes.append(shape)
        names.append(name)
    _check_header(kind, header)
    _check_buffers(kind, tuple(shapes), tuple(names))
    arrays = [
        _array(f, shape, name) for f, shape, name in zip(frames[2:], shapes, names, strict=True)
    ]
    if SCHEMAS[kind].flow and len(arrays) >= 3:
        _check_flow(kind, arrays[2])
    for key in RESERVED:  # the header is ours (just unpacked): what is left are the fields
        del header[key]
    return Message(kind, stream, seq, header, arrays)


def recv(socket: zmq.Socket, flags: int = 0) -> Message:
    """Receive one message without copying its buffers; raises `Malformed` (the message is
    consumed) or `zmq.Again` (with NOBLOCK and nothing there)."""
    return decode(recv_parts(socket, flags))


def _bytes(frame) -> bytes:
    if type(frame) is bytes:
        return frame
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _spec(spec) -> tuple[tuple, str]:
    """A buffer spec's (shape, dtype name), or Malformed."""
    try:
        shape = tuple(spec["shape"])
        dtype = spec["dtype"]
        ok = all(_int(n) and 0 <= n <= MAX_MESSAGE for n in shape) and dtype in _DTYPES
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise Malformed("malformed", f"bad buffer spec {_show(spec)}")
    return shape, dtype


def _array(frame, shape: tuple, dtype_name: str) -> np.ndarray:
    """A read-only array over the received buffer, without a copy."""
    dtype = _DTYPES[dtype_name]
    buffer = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    expected = math.prod(shape) * dtype.itemsize
    if buffer.nbytes != expected:
        raise Malformed(
            "malformed", f"buffer of {buffer.nbytes} bytes for shape {shape} {dtype_name}"
        )
    return np.ndarray(shape, dtype, buffer.toreadonly())
