"""`mfvan analyze`: recorded videos in, events out, through the live pipeline's parts.

Each file is decoded as ingest decodes a camera (`PyAVSource`: the decoder's luma plane,
media time from PTS, packets the decoder refuses skipped and counted), tracked and
spotted by the spot stage's `FaceSpotter` (its face search on the same media-time
schedule as live, so the intervals are the live pipeline's, frame for frame), and each
(onset, apex) pair is classified by the recognizer's calibrated backend with the flow
the spot stage would send (`wire_flow`). The events are the live pipeline's `Event`s.

Choices where the live pipeline has no answer:
- Wall-clock times: a recording's frames were captured when it was made, not now. An
  event's times are the file's start (its `creation_time` tag, else its modification
  time less its duration) plus the media time.
- Ids: UUIDv7s whose random bits come from a hash of the file's name, size and the
  interval, so analysing the same file twice gives the same ids (and a store keeps each
  event once).
- Stream: the file's name without its extension (`-i` added when two files share one).
- Clips (`clips`): the aligned face crops from half a second before the onset to half a
  second after the offset, H.264 in MP4 at the video's rate, one file per event,
  written once the video has passed the clip's end.
- A file that cannot be opened or decoded is reported and skipped (its events dropped);
  the others go on.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfvan.kernels.facespot import FaceSpotter
from mfvan.kernels.motion import wire_flow
from mfvan.stream.client import Event
from mfvan.stream.ingest import PyAVSource, SourceError
from mfvan.stream.messages import uuid7
from mfvan.stream.outputs.store import write_clip
from mfvan.stream.stages import VETO

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg"}
CLIP_MARGIN_S = 0.5
BATCH = 32  # pairs a backend call


@dataclass
class Recognizer:
    """The live recognizer's classifier: calibrated backend, class names, model version,
    the least confidence an event needs (as `mfvan recognize --min-confidence`)."""

    backend: Callable
    classes: list[str]
    version: str
    min_confidence: float = 0.0


@dataclass
class FileResult:
    path: Path
    stream: str
    events: list[Event] = field(default_factory=list)
    frames: int = 0
    seconds_of_video: float = 0.0
    seconds_taken: float = 0.0
    decode_errors: int = 0
    error: str | None = None  # why the file was skipped


def videos(paths: list[Path]) -> list[Path]:
    """The files named, and the video files (by suffix) under the folders named, sorted."""
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(path)
    return out


def _probe(path: Path) -> tuple[float, int | None, float]:
    """(start on the wall clock in s, frames declared or None, fps) of a video."""
    import datetime

    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(container.duration or 0) / 1e6
        tag = container.metadata.get("creation_time") or stream.metadata.get("creation_time")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames or None
    start = None
    if tag:
        try:
            start = datetime.datetime.fromisoformat(tag.replace("Z", "+00:00")).timestamp()
        except ValueError:
            start = None
    if start is None:
        start = path.stat().st_mtime - duration
    return start, frames, fps


def _entropy(path: Path, *numbers: int) -> bytes:
    stat = path.stat()
    key = f"{path.name}|{stat.st_size}|{'|'.join(map(str, numbers))}".encode()
    return hashlib.sha256(key).digest()[:10]


class _Clips:
    """The face crops of the last few seconds, and the clips due from them: an interval's
    clip is asked for when the spotter confirms it, and written once the video has passed
    its last frame (or at the video's end), named by its event's id."""

    def __init__(self, folder: Path, fps: float, keep_s: float = 4.0):
        self.folder, self.fps = folder, fps or 25.0
        self.crops: deque = deque(maxlen=max(int(keep_s * self.fps), 16))
        self.due: list[tuple[int, int, str]] = []  # (first frame, last frame, event id)
        self.written: dict[str, Path] = {}

    def push(self, index: int, crop: np.ndarray | None, size: int) -> None:
        blank = crop is None  # no face on this frame: a black crop keeps the clip's timing
        self.crops.append((index, np.zeros((size, size), np.uint8) if blank else crop))
        for due in [d for d in self.due if d[1] <= index]:
            self.due.remove(due)
            self._clip(*due)

    def want(self, onset: int, offset: int, event_id: str) -> None:
        margin = int(round(CLIP_MARGIN_S * self.fps))
        self.due.append((max(onset - margin, 0), offset + margin, event_id))

    def flush(self) -> None:
        for due in self.due:
            self._clip(*due)
        self.due = []

    def _clip(self, first: int, last: int, event_id: str) -> None:
        frames = [c for i, c in self.crops if first <= i <= last]
        if not frames:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{event_id}.mp4"
        write_clip(path, frames, self.fps)
        self.written[event_id] = path


def analyze_file(
    path: Path,
    stream: str,
    recognizer: Recognizer,
    params=None,
    clips: Path | None = None,
    progress=None,
    size: int = 128,
) -> FileResult:
    """One video's events (see the module's docstring); `progress(n)` after every n
    frames. Never raises for a file it cannot read: the result's `error` says why."""
    result = FileResult(path, stream)
    started = time.perf_counter()
    try:
        start_s, _, fps = _probe(path)
    except Exception as e:  # PyAV raises many kinds for a file that is not a video
        result.error = f"cannot open it: {e}"
        return result
    spots = FaceSpotter(params, size)
    pending: list[tuple] = []  # (interval, face box, flow) waiting for a batch
    keep = _Clips(clips, fps) if clips else None

    def errors(_):
        result.decode_errors += 1

    base_ns = int(start_s * 1e9)

    def classify():
        result.events += _events(pending, recognizer, stream, path, base_ns, len(result.events))
        pending.clear()

    source = PyAVSource(str(path), grey=True, on_decode_error=errors)
    last_media = 0
    try:
        for frame in source:
            t_media = frame.t_media or 0
            for it in spots.push(frame.image, frame.index, t_media, frame.key_frame):
                pending.append((it, spots.face_box(), wire_flow(it.onset_crop, it.apex_crop)))
                if keep:
                    keep.want(it.onset, it.offset, _id(path, base_ns, it))
                if len(pending) >= BATCH:
                    classify()
            if keep:
                keep.push(frame.index, spots.crop, size)
            result.frames += 1
            last_media = t_media
            if progress and result.frames % 50 == 0:
                progress(50)
    except SourceError as e:
        result.error = str(e)
        result.events = []
        return result
    if pending:
        classify()
    if keep:
        keep.flush()
        for event in result.events:
            if event.id in keep.written:
                event.fields["clip"] = str(keep.written.pop(event.id))
        for orphan in keep.written.values():  # its event fell under --min-confidence
            orphan.unlink(missing_ok=True)
    if progress:
        progress(result.frames % 50)
    result.seconds_of_video = last_media / 1e9 + (1 / fps if fps else 0)
    result.seconds_taken = time.perf_counter() - started
    return result


def _id(path: Path, base_ns: int, it) -> str:
    return uuid7(base_ns + it.apex_ns, _entropy(path, it.onset, it.apex, it.offset))


def _events(pending, recognizer: Recognizer, stream, path, base, first_seq) -> list[Event]:
    """The recognizer's events for spotted intervals (one backend call)."""
    onset = np.stack([it.onset_crop for it, _, _ in pending])
    apex = np.stack([it.apex_crop for it, _, _ in pending])
    flow = np.stack([f for _, _, f in pending])
    probs = np.asarray(recognizer.backend(onset, apex, flow))
    out = []
    for (it, face, _), p in zip(pending, probs, strict=True):
        best = int(np.argmax(p))
        confidence = float(p[best])
        if recognizer.classes[best] == VETO or confidence < recognizer.min_confidence:
            continue  # refused as the live recognizer refuses it
        out.append(
            Event(
                stream=stream,
                seq=first_seq + len(out),
                label=recognizer.classes[best],
                probs={c: float(x) for c, x in zip(recognizer.classes, p, strict=True)},
                confidence=confidence,
                onset=it.onset,
                apex=it.apex,
                offset=it.offset,
                model=recognizer.version,
                times={
                    "t_onset": base + it.onset_ns,
                    "t_apex": base + it.apex_ns,
                    "t_offset": base + it.offset_ns,
                },
                fields={
                    "spot_score": float(it.score),
                    "amplitude": float(it.amplitude),
                    "region": it.region,
                    "media_onset": it.onset_ns,
                    "media_apex": it.apex_ns,
                    "media_offset": it.offset_ns,
                    "source": str(path),
                },
                crops=[it.onset_crop.copy(), it.apex_crop.copy()],
                id=_id(path, base, it),
                face=face,
            )
        )
    return out
