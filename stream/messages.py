"""Every kind of message, typed, each field declared once: `Frame` (ingest -> spot),
`Pair` (spot -> recognizer), `Event` (recognizer -> subscribers; users read it as
`mfvan.stream.Event`), `Status` and `Preview` (a spot stage's view of a stream, for the web
view) and `Eos` (a stream's end).

A class's fields are the message's header fields, each declared with `header(check)`: the
check is the wire schema's type test for it, and `protocol.SCHEMAS` is built from these
declarations (`schema()`), so a field is named in one place: the class that carries it.
Buffers are fields too, declared with `buffer(format)` in their wire order
(`buffer_fields()`); a message carries a prefix of them (a pair's clip only after its
flow). `to_message()` and `from_message()` turn an object into a `protocol.Message` and
back; `send()` sends one. Header fields a class does not declare travel in `extra`, so a
newer producer's fields reach an older consumer.

A `Pair` and its `Event` share their fields through `Spotted`: the interval, its times and
the spotter's measurements. An event carries all of them over (`Event.of`), so what the
spot stage measured reaches every subscriber.

Times: `media_*` are media time (ns, the stream's own clock: what the spotter works in);
`t_*` are capture wall-clock time (ns since the epoch), for latency: `t_onset`, `t_apex`,
`t_offset` are the interval's moments on that clock, `t_capture` the capture of the frame
(for a pair: the frame that confirmed the apex), `t_ingest` / `t_spot` / `t_received` /
`t_recognize` when each stage handled it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import re
import time
import uuid
from typing import Any, ClassVar

import numpy as np

from . import protocol

# ----------------------------------------------------------------------------- field types


def is_int(v) -> bool:
    """An integer in 64 bits (not bool, not float): what SQLite and every consumer hold
    (before: 2^63 as a frame index took the recorder down with an OverflowError)."""
    return type(v) is int and -(2**63) <= v < 2**63


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_id(v) -> bool:
    """An event id as `uuid7` writes it, or none yet (before: a CR in an id made the
    webhook's header invalid, and each such event held the worker 31 s in retries)."""
    return type(v) is str and (v == "" or _UUID.fullmatch(v) is not None)


MAX_CLOCK_NS = 7_258_118_400 * 10**9  # 2200-01-01: a wall-clock time past it is a bug
MAX_MEDIA_NS = 2**62  # 146 years of media time, either way


def is_clock(v) -> bool:
    """A wall-clock time, ns since the epoch: from 1970 to 2200 (before: 2^64 - 1 gave an
    event in the year 2554, a negative one a snapshot folder named 1677-09-21)."""
    return type(v) is int and 0 <= v <= MAX_CLOCK_NS


def is_media(v) -> bool:
    """A media time or a span of it, ns (a stream's own clock: may start below 0)."""
    return type(v) is int and -MAX_MEDIA_NS <= v <= MAX_MEDIA_NS


def is_num(v) -> bool:
    """A finite number; an integer one in 64 bits (2^63 as a confidence took the recorder
    down: SQLite holds no larger integer)."""
    return (type(v) is float and math.isfinite(v)) or is_int(v)


def is_str(v) -> bool:
    return type(v) is str and len(v) <= 256


def is_bool(v) -> bool:
    return type(v) is bool


def is_map(v) -> bool:
    """A map that JSON can say as it is (`protocol.plain`): it passes through to events."""
    return type(v) is dict and protocol.plain(v) is None


def is_nums(v) -> bool:
    return type(v) is list and 0 < len(v) <= 1000 and all(is_num(x) for x in v)


def is_strs(v) -> bool:
    return type(v) is list and 0 < len(v) <= 1000 and all(is_str(x) for x in v)


def is_box(v) -> bool:
    return type(v) is list and len(v) == 4 and all(is_num(x) and abs(x) <= 1e5 for x in v)


MAX_FACES = 16  # faces a status or a preview lists (a stage tracks its --max-faces)


def is_face_id(v) -> bool:
    """A face's track id in its stream: 1, 2, ... (`kernels.faces.FaceTracker`)."""
    return is_int(v) and 0 < v < 2**31


def is_faces(v) -> bool:
    """The faces in view: [[id, x, y, w, h], ...] (px), at most `MAX_FACES`."""
    return (
        type(v) is list
        and len(v) <= MAX_FACES
        and all(type(f) is list and len(f) == 5 and is_face_id(f[0]) and is_box(f[1:]) for f in v)
    )


def is_samples(v) -> bool:
    """A signal's samples: numbers, or nil where the signal was not measured."""
    return type(v) is list and len(v) <= 1000 and all(x is None or is_num(x) for x in v)


def nil_or(check):
    """`check`, or nil (a field whose absence is itself news: no face, no threshold)."""

    def ok(v) -> bool:
        return v is None or check(v)

    ok.__name__ = f"nil_or_{check.__name__}"
    return ok


def header(check, default: Any = None, required: bool = False, nil: bool = False):
    """A header field: `check` is its wire type (a value failing it is refused as
    Malformed), `required` that a message without it is refused. A field left at None is
    not sent (the wire's absence), unless `nil`: then None is sent as nil (no face, no
    threshold: news in itself), and `check` allows it. The default, when a list or a
    dict, is copied for each object."""
    if nil:
        check = nil_or(check)
    meta = {"check": check, "required": required, "nil": nil}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def buffer(fmt: str):
    """A buffer field: an array sent as raw memory, `fmt` its pixel format ("grey", "flow",
    "clip"; "image": grey or rgb24 by its rank)."""
    return dataclasses.field(default=None, metadata={"buffer": fmt})


# ----------------------------------------------------------------------------- the base


@functools.cache
def _fields(cls, kind: str) -> tuple[dataclasses.Field, ...]:
    """A class's fields of one kind ("check": header, "buffer"), computed once (a frame's
    send asks at every frame)."""
    return tuple(f for f in dataclasses.fields(cls) if kind in f.metadata)


@dataclasses.dataclass(kw_only=True)
class Message:
    """A message of one `KIND`: its stream, its number (per stream and kind, from 0), its
    declared header fields and buffers, and `extra`, the header fields it does not declare.
    Subclasses set `KIND` and `LIMITS` (the buffers' counts and sizes, `protocol.Schema`'s
    keywords other than the fields)."""

    KIND: ClassVar[str] = ""
    LIMITS: ClassVar[dict] = {}
    COPY: ClassVar[bool] = False  # buffers copied out of the received frames (else views)

    stream: str = ""
    seq: int = 0
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.KIND

    @classmethod
    def header_fields(cls) -> tuple[dataclasses.Field, ...]:
        return _fields(cls, "check")

    @classmethod
    def buffer_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The buffers, in their wire order."""
        return _fields(cls, "buffer")

    @classmethod
    def schema(cls) -> protocol.Schema:
        """The wire schema of this kind, built from the fields' declarations."""
        checks = {f.name: f.metadata["check"] for f in cls.header_fields()}
        required = [f.name for f in cls.header_fields() if f.metadata["required"]]
        for name, (check, needed) in cls.wire_only().items():
            checks[name] = check
            required += [name] if needed else []
        buffers = [f.name for f in cls.buffer_fields()]
        limits = {**cls.LIMITS, "consistent": cls.consistent}
        limits.setdefault("buffers", (len(buffers),))
        if "flow" in buffers:
            limits["flow"] = True
        if "clip" in buffers:
            limits["clip"] = buffers.index("clip") + 1
        return protocol.Schema(fields=checks, required=tuple(required), **limits)

    @classmethod
    def wire_only(cls) -> dict:
        """Fields on the wire that are not attributes (an event's `classes`): name ->
        (check, required)."""
        return {}

    @classmethod
    def consistent(cls, header: dict) -> str | None:
        """None, or why a received header's fields do not go together (each has passed
        its own check)."""
        return None

    def header(self) -> dict:
        """The header fields as sent: the declared ones not None, then `extra`."""
        out = {}
        for f in self.header_fields():
            value = getattr(self, f.name)
            if value is not None or f.metadata["nil"]:
                out[f.name] = value
        return {**out, **self.extra}

    def arrays(self) -> tuple[list[np.ndarray], list[str]]:
        """The buffers sent (a prefix of `buffer_fields()`) and their pixel formats."""
        arrays, formats = [], []
        for f in self.buffer_fields():
            array = getattr(self, f.name)
            if array is None:
                break
            fmt = f.metadata["buffer"]
            if fmt == "image":
                fmt = "grey" if array.ndim == 2 else "rgb24"
            arrays.append(array)
            formats.append(fmt)
        return arrays, formats

    def to_message(self) -> protocol.Message:
        return protocol.Message(self.KIND, self.stream, self.seq, self.header(), self.arrays()[0])

    def encode(self) -> list:
        """`protocol.encode` of this message: its frames."""
        arrays, formats = self.arrays()
        return protocol.encode(
            self.KIND, self.stream, self.seq, arrays, formats=formats, **self.header()
        )

    def send(self, socket, wait_ms: int = 0) -> bool:
        """`protocol.send` of this message; False when the queue stayed full."""
        arrays, formats = self.arrays()
        return protocol.send(
            socket,
            self.KIND,
            self.stream,
            self.seq,
            arrays,
            formats=formats,
            wait_ms=wait_ms,
            **self.header(),
        )

    @classmethod
    def from_message(cls, msg: protocol.Message):
        """The typed message of a decoded one (`protocol.decode` has checked its fields'
        types and its buffers against this kind's schema); Malformed when it is another
        kind or its fields do not go together."""
        if msg.kind != cls.KIND:
            raise protocol.Malformed("unexpected", f"a {msg.kind}, not a {cls.KIND}")
        rest = dict(msg.fields)
        values = cls._from_wire(rest)
        values.update({f.name: rest.pop(f.name) for f in cls.header_fields() if f.name in rest})
        for f, array in zip(cls.buffer_fields(), msg.arrays, strict=False):
            values[f.name] = np.array(array) if cls.COPY else array
        return cls(stream=msg.stream, seq=msg.seq, extra=rest, **values)

    @classmethod
    def _from_wire(cls, rest: dict) -> dict:
        """Attributes made from wire fields that are not attributes (which it takes out of
        `rest`)."""
        return {}


# ----------------------------------------------------------------------------- frames


@dataclasses.dataclass(kw_only=True)
class Frame(Message):
    """One frame, as a source yields it and ingest sends it: the image (uint8, (H, W) grey
    or (H, W, 3) RGB), its index in the stream, its capture time (wall clock) and media
    time (the stream's clock; None: the source has none, capture time stands for it),
    whether the decoder saw a key frame, and a synthetic source's ground truth."""

    KIND: ClassVar[str] = "frame"
    LIMITS: ClassVar[dict] = {"buffers": (1,), "ranks": (2, 3)}

    image: np.ndarray = buffer("image")
    index: int | None = header(is_int)  # None (a producer without it): its `seq` stands
    t_capture: int = header(is_clock, 0)
    t_media: int | None = header(is_media)
    t_ingest: int | None = header(is_clock)
    key_frame: bool = header(is_bool, False)
    truth: dict | None = header(nil_or(is_map))

    @property
    def media_ns(self) -> int:
        """Its media time: what the spotter works in (capture time stands in for a source
        without one)."""
        return self.t_capture if self.t_media is None else self.t_media

    def header(self) -> dict:
        return {**super().header(), "t_media": self.media_ns}


@dataclasses.dataclass(kw_only=True)
class Eos(Message):
    """A stream's end (a file's last frame was sent)."""

    KIND: ClassVar[str] = "eos"


# ----------------------------------------------------------------------------- pairs


@dataclasses.dataclass(kw_only=True)
class Spotted(Message):
    """What a `Pair` and its `Event` share: the interval (frame indices, media time and
    capture time), the spotter's measurements, the face square, ground truth."""

    onset: int = header(is_int, 0, required=True)  # frame indices in the stream
    apex: int = header(is_int, 0, required=True)
    offset: int = header(is_int, 0, required=True)
    media_onset: int | None = header(is_media)
    media_apex: int | None = header(is_media)
    media_offset: int | None = header(is_media)
    t_onset: int | None = header(is_clock)
    t_apex: int | None = header(is_clock)
    t_offset: int | None = header(is_clock)
    t_capture: int | None = header(is_clock)  # the frame that confirmed the apex
    t_ingest: int | None = header(is_clock)
    t_spot: int | None = header(is_clock)  # set when it is sent
    spot_score: float | None = header(is_num)  # the spotter's peak over its threshold
    amplitude: float | None = header(is_num)  # px (128 px crop)
    region: str | None = header(is_str)  # the face region that moved most
    spot_latency_ns: int | None = header(is_media)  # media time from the apex to confirming
    truth: dict | None = header(nil_or(is_map))  # a synthetic source's ground truth
    face: list | None = header(is_box)  # [x, y, w, h] px: the tracked face square
    face_id: int | None = header(is_face_id)  # the face's track id in its stream (1, 2, ...)
    clip_fps: float | None = header(is_num)  # the clip's frames per second (media time)

    @classmethod
    def spotted_fields(cls) -> list[dataclasses.Field]:
        own = {f.name for f in dataclasses.fields(Message)}
        return [f for f in dataclasses.fields(Spotted) if f.name not in own]


_CROPS = {"sides": (protocol.MIN_CROP, protocol.MAX_CROP), "square": True, "same_shape": True}


@dataclasses.dataclass(kw_only=True)
class Pair(Spotted):
    """One spotted micro-expression as the spot stage sends it to the recognizer: its
    (onset, apex) face crops (uint8 (S, S) grey), their flow ((S, S, 2) float16, onset ->
    apex, `kernels.motion.wire_flow`; an older spot stage sends none) and, with `mfvan spot
    --clips`, a clip of the face crops around it ((N, S, S) uint8)."""

    KIND: ClassVar[str] = "pair"
    LIMITS: ClassVar[dict] = {"buffers": (2, 3, 4), **_CROPS}

    onset_crop: np.ndarray = buffer("grey")
    apex_crop: np.ndarray = buffer("grey")
    flow: np.ndarray | None = buffer("flow")
    clip: np.ndarray | None = buffer("clip")


# ----------------------------------------------------------------------------- events


EVENT_VERSION = 2  # of `Event.as_dict()` (`--json`, the event store): 2 added id and times


def iso(t_ns: int) -> str:
    """ns since the epoch as ISO 8601 in UTC, to the ms (`2026-12-03T13:54:01.655Z`)."""
    stamp = datetime.datetime.fromtimestamp(t_ns / 1e9, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# what `Event.as_dict` lists by name, before its times and the rest (`fields`)
_LEADING = ("id", "stream", "seq", "label", "confidence", "probs", "onset", "apex", "offset")


@dataclasses.dataclass(kw_only=True)
class Event(Spotted):
    """One recognised micro-expression: its pair's fields (`Spotted`) and the
    recognizer's. Frame indices (`onset`, `apex`, `offset`) count the stream's frames;
    `onset_time`, `apex_time`, `offset_time` are the same moments on the capture wall
    clock (seconds since the epoch; `*_iso`: ISO 8601, UTC). `confidence` is the label's
    calibrated probability; the spotter's own score (how far the motion rose over its
    threshold, 1-6 or so) is `spot_score`. `probs` maps every class to its probability
    (on the wire: the lists `classes` and `probs`). `times` gathers the `t_*` fields,
    `fields` the others not named here (and `extra`), as `as_dict` lists them. Crops only
    when the recognizer runs `--with-crops` (with them the clip, when the pair had one)."""

    KIND: ClassVar[str] = "event"
    LIMITS: ClassVar[dict] = {"buffers": (0, 2, 3), **_CROPS}
    COPY: ClassVar[bool] = True  # a subscriber keeps events past the socket's frames

    id: str = header(is_id, "")  # a UUIDv7: unique, sortable by time
    label: str = header(is_str, "", required=True)
    probs: dict = header(is_nums, {}, required=True)
    confidence: float = header(is_num, 0.0, required=True)
    model: str = header(is_str, "", required=True)  # the model's version
    batch: int | None = header(is_int)  # the batch it ran in
    t_received: int | None = header(is_clock)
    t_recognize: int | None = header(is_clock)
    onset_crop: np.ndarray | None = buffer("grey")
    apex_crop: np.ndarray | None = buffer("grey")
    clip: np.ndarray | None = buffer("clip")

    @classmethod
    def of(cls, pair: Spotted, **recognized) -> Event:
        """The event of `pair`: every field they share carried over, the recognizer's
        added."""
        shared = {f.name: getattr(pair, f.name) for f in Spotted.spotted_fields()}
        return cls(stream=pair.stream, **shared, **recognized)

    @classmethod
    def wire_only(cls) -> dict:
        return {"classes": (is_strs, True)}

    @classmethod
    def consistent(cls, header: dict) -> str | None:
        if len(header["probs"]) != len(header["classes"]):
            return "probs and classes differ in length"
        if header["label"] not in header["classes"]:
            return f"label {header['label']!r:.40} is not one of the classes"
        return None

    def header(self) -> dict:
        out = super().header()
        out["classes"] = list(self.probs)
        out["probs"] = [float(p) for p in self.probs.values()]
        return out

    @classmethod
    def _from_wire(cls, rest: dict) -> dict:
        try:
            return {"probs": dict(zip(rest.pop("classes"), rest.pop("probs"), strict=True))}
        except (KeyError, ValueError, TypeError) as e:
            raise protocol.Malformed("malformed", f"not an event: {e}") from None

    @property
    def classes(self) -> list[str]:
        return list(self.probs)

    @property
    def crops(self) -> list[np.ndarray]:
        """The onset and apex crops (`--with-crops`), or none."""
        return [c for c in (self.onset_crop, self.apex_crop) if c is not None]

    @property
    def times(self) -> dict[str, int]:
        """ns: t_onset, t_apex, t_offset, t_capture, t_ingest, t_spot, ... (those set)."""
        return {
            f.name: getattr(self, f.name)
            for f in self.header_fields()
            if f.name.startswith("t_") and getattr(self, f.name) is not None
        }

    @property
    def fields(self) -> dict:
        """The fields not listed on their own by `as_dict` (spot_score, region, ...), and
        `extra`."""
        own = {*_LEADING, "model", "face", "face_id"}
        rest = {
            f.name: getattr(self, f.name)
            for f in self.header_fields()
            if f.name not in own and not f.name.startswith("t_")
        }
        return {**{k: v for k, v in rest.items() if v is not None}, **self.extra}

    @property
    def onset_time(self) -> float:
        return (self.t_onset or 0) / 1e9

    @property
    def apex_time(self) -> float:
        return (self.t_apex or 0) / 1e9

    @property
    def offset_time(self) -> float:
        return (self.t_offset or 0) / 1e9

    @property
    def onset_iso(self) -> str:
        return iso(self.t_onset or 0)

    @property
    def apex_iso(self) -> str:
        return iso(self.t_apex or 0)

    @property
    def offset_iso(self) -> str:
        return iso(self.t_offset or 0)

    def as_dict(self) -> dict:
        """What `--json` prints and the event store keeps (version `EVENT_VERSION`)."""
        return {
            "v": EVENT_VERSION,
            **{k: getattr(self, k) for k in _LEADING},
            "onset_time": self.onset_time,
            "apex_time": self.apex_time,
            "offset_time": self.offset_time,
            "onset_iso": self.onset_iso,
            "apex_iso": self.apex_iso,
            "offset_iso": self.offset_iso,
            "face": self.face,
            "face_id": self.face_id,
            "model": self.model,
            "times": self.times,
            **self.fields,
        }


def uuid7(t_ns: int | None = None, entropy: bytes | None = None) -> str:
    """A UUID version 7 (RFC 9562): 48 bits of Unix time in ms, then 74 random bits, so
    ids sort by time (to the ms) as strings and in a database index, and never collide
    in practice across processes. (Python's `uuid.uuid7` arrives only in 3.14.)
    `entropy` (10 bytes) replaces the random bits, for ids that must be reproducible
    (`mfvan analyze`)."""
    ms = (time.time_ns() if t_ns is None else t_ns) // 1_000_000
    rand = int.from_bytes(entropy if entropy is not None else os.urandom(10), "big")
    value = (ms & (1 << 48) - 1) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (1 << 62) - 1
    return str(uuid.UUID(int=value))


# ----------------------------------------------------------------------------- the watch


@dataclasses.dataclass(kw_only=True)
class Status(Message):
    """A stream as its spot stage sees it, a few times a second: whether it tracks a face
    and where (`face`: the first face's square; `faces`: every face in view with its id),
    the first face's spotter signal since the last status and its start threshold (nil
    where not measured), the frame rate, the frame's size."""

    KIND: ClassVar[str] = "status"

    state: str = header(is_str, "", required=True)
    face: list | None = header(is_box, nil=True)
    faces: list = header(is_faces, [])
    signal: list = header(is_samples, [], required=True)
    threshold: float | None = header(is_num, nil=True)
    fps: float = header(is_num, 0.0)
    width: int = header(is_int, 0)
    height: int = header(is_int, 0)
    t_status: int = header(is_clock, 0, required=True)


@dataclasses.dataclass(kw_only=True)
class Preview(Message):
    """A downscaled frame (grey or RGB), the first face's square in its own pixels (nil:
    no face), every face in view with its id (`faces`, the same pixels) and the scale from
    the frame."""

    KIND: ClassVar[str] = "preview"
    LIMITS: ClassVar[dict] = {"buffers": (1,), "ranks": (2, 3)}

    image: np.ndarray = buffer("image")
    face: list | None = header(is_box, nil=True)
    faces: list = header(is_faces, [])
    t_capture: int = header(is_clock, 0)
    scale: float = header(is_num, 1.0)


KINDS = {cls.KIND: cls for cls in (Frame, Pair, Event, Eos, Status, Preview)}
protocol.SCHEMAS.update({kind: cls.schema() for kind, cls in KINDS.items()})


def typed(msg: protocol.Message) -> Message:
    """The typed message of a decoded one."""
    return KINDS[msg.kind].from_message(msg)
