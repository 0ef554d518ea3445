"""The messages after the frame, typed: a `Pair` (spot stage -> recognizer) and the header of
an event (recognizer -> subscribers; users read it as `mfvan.stream.client.Event`).

`protocol` frames any message (kind, stream, seq, header fields, arrays); this module says
what the fields of a pair and an event are, so that the stage that writes one and the stage
that reads it name them in one place.

Times: `media_*` are media time (ns, the stream's own clock: what the spotter works in);
`t_*` are capture wall-clock time (ns since the epoch), for latency: `t_onset`, `t_apex`,
`t_offset` are the interval's moments on that clock, `t_capture` the capture of the frame
that confirmed the apex, `t_ingest` / `t_spot` / `t_received` / `t_recognize` when each
stage handled it.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field, fields

import numpy as np

from . import protocol


@dataclass
class Pair:
    """One spotted micro-expression: its (onset, apex) crops, their flow and its interval,
    as the spot stage sends it to the recognizer (buffers: onset crop, apex crop, flow)."""

    stream: str
    seq: int
    onset_crop: np.ndarray  # uint8 (S, S) grey
    apex_crop: np.ndarray
    onset: int  # frame indices in the stream
    apex: int
    offset: int
    media_onset: int
    media_apex: int
    media_offset: int
    t_onset: int
    t_apex: int
    t_offset: int
    t_capture: int
    t_ingest: int
    spot_score: float  # the spotter's peak over its threshold (not a class's confidence)
    amplitude: float  # px (128 px crop)
    region: str  # the face region that moved most
    spot_latency_ns: int  # media time from the apex to the frame that confirmed it
    truth: dict | None = None  # a synthetic source's ground truth, when it has one
    flow: np.ndarray | None = None  # (S, S, 2) float16: onset -> apex, `kernels.motion`
    t_spot: int = 0  # set when it is sent
    face: list | None = None  # [x, y, w, h] px: the tracked face square when it was confirmed
    clip: np.ndarray | None = None  # (N, S, S) uint8: face crops around it (`--clips`)
    clip_fps: float = 0.0  # the clip's frames per second (media time)
    extra: dict = field(default_factory=dict)  # fields this version does not name

    def header(self) -> dict:
        """The header fields (`protocol.send`'s keywords), crops and framing left out."""
        framing = ("stream", "seq", "onset_crop", "apex_crop", "flow", "extra", "truth", "clip")
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in framing}
        if self.truth is not None:
            header["truth"] = self.truth
        if self.face is None:
            del header["face"]
        if self.clip is None:
            del header["clip_fps"]
        return {**header, **self.extra}

    def send(self, socket, wait_ms: int = 0) -> bool:
        """`protocol.send` of this pair; False when the queue stayed full."""
        arrays, formats = [self.onset_crop, self.apex_crop], ["grey", "grey"]
        if self.flow is not None:
            arrays.append(self.flow)
            formats.append("flow")
            if self.clip is not None:  # after the flow, always (the schema's 4th buffer)
                arrays.append(self.clip)
                formats.append("clip")
        return protocol.send(
            socket,
            "pair",
            self.stream,
            self.seq,
            arrays,
            formats=formats,
            wait_ms=wait_ms,
            **self.header(),
        )


# what an event carries over from its pair's header (the rest is the spot stage's own
# bookkeeping); the recognizer adds EVENT_FIELDS
FROM_PAIR = (
    "onset", "apex", "offset", "media_onset", "media_apex", "media_offset",
    "t_onset", "t_apex", "t_offset", "t_capture", "t_ingest", "t_spot",
    "spot_score", "region", "truth", "face", "clip_fps",
)  # fmt: skip
# what the recognizer adds: the event's id, the class, every class's probability (in
# `classes` order, calibrated), the confidence (the class's probability), the model
# version, the batch it ran in, and when it received and classified the pair
EVENT_FIELDS = (
    "id", "label", "probs", "confidence", "classes", "model", "batch", "t_received",
    "t_recognize",
)  # fmt: skip


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


def event_header(pair_fields: dict, **recognized) -> dict:
    """An event's header: the pair's fields it carries over, and the recognizer's
    (`EVENT_FIELDS`, all required)."""
    missing = set(EVENT_FIELDS) - set(recognized)
    extra = set(recognized) - set(EVENT_FIELDS)
    if missing or extra:
        raise ValueError(f"an event needs {EVENT_FIELDS}: missing {missing}, unknown {extra}")
    return {**{k: pair_fields[k] for k in FROM_PAIR if k in pair_fields}, **recognized}
