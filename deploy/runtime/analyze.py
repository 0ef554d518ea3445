"""`mfvan analyze`: recorded videos in, events out, through the live pipeline's parts.

Each file is decoded as ingest decodes a camera (`PyAVSource`: the decoder's luma plane,
media time from PTS, packets the decoder refuses skipped and counted), tracked and
spotted by the spot stage's `FaceSpotter` (its face search on the same media-time
schedule as live, so the intervals are the live pipeline's, frame for frame), made into
the spot stage's pairs by its own `stages.StreamPairs` (crops, their flow, the
interval's times, the clip) and classified by the recognizer's own `Classifier` (the same
backend call, the same veto and confidence rule, the same `Event`s, with the same fields).

Choices where the live pipeline has no answer:
- Wall-clock times: a recording's frames were captured when it was made, not now. A
  frame's capture time is the file's start (its `creation_time` tag, else its
  modification time less its duration) plus its media time, so an event's `t_onset`,
  `t_apex`, `t_offset` and `t_capture` are on the recording's clock; `t_ingest`, `t_spot`,
  `t_received` and `t_recognize` are when analyze decoded, spotted and classified it.
- Ids: UUIDv7s whose random bits come from a hash of the file's name, size and the
  interval, so analysing the same file twice gives the same ids (and a store keeps each
  event once).
- Stream: the file's name without its extension (`-i` added when two files share one).
- Clips (`clips`): the live rule (`stages.ClipBuffer`, through `StreamPairs`: the aligned
  face crops from half a second before the onset to the frame that confirmed the
  interval), H.264 in MP4 at the video's rate, one file per published event, named by
  its id; `source` names the file.
- A file that cannot be opened or decoded is reported and skipped (its events dropped);
  the others go on.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfvan.kernels.facespot import MAX_STEP_NS, FaceSpotter
from mfvan.stream.ingest import PyAVSource, SourceError
from mfvan.stream.messages import Event, Pair, uuid7
from mfvan.stream.outputs.store import write_clip
from mfvan.stream.recognizer import Classifier
from mfvan.stream.stages import CLIP_MARGIN_S, StreamPairs

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg"}
SIZE = 128  # px, the face crops' side (as the spot stage's)
BATCH = 32  # pairs a backend call (8 with clips: each pair holds its clip until then)


@dataclass
class FileResult:
    path: Path
    stream: str
    events: list[Event] = field(default_factory=list)
    frames: int = 0
    seconds_of_video: float = 0.0
    seconds_taken: float = 0.0
    decode_errors: int = 0
    clock_jumps: int = 0  # times its media time jumped (joined recordings, a restart)
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


def _why(e: Exception) -> str:
    """What a PyAV error says, without its raw errno (`[Errno 1094995529]`)."""
    import av

    if isinstance(e, av.FFmpegError) and e.strerror:
        return e.strerror
    return str(e)


def _probe(path: Path) -> tuple[float, int | None, float]:
    """(start on the wall clock in s, frames declared or None, fps) of a video."""
    import datetime

    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
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


@dataclass
class _Analysis:
    """One file's analysis as it goes: the pairs waiting for a batch, the clips."""

    path: Path
    stream: str
    classifier: Classifier
    base_ns: int  # the recording's start on the wall clock
    fps: float
    clips: Path | None
    result: FileResult
    pending: list[Pair] = field(default_factory=list)

    def add(self, pair: Pair) -> None:
        self.pending.append(pair)
        if len(self.pending) >= (8 if self.clips else BATCH):
            self.classify()

    def classify(self) -> None:
        """The pending pairs' events (one backend call), with their reproducible ids."""
        if not self.pending:
            return
        decided = self.classifier.recognize(self.pending, time.time_ns())
        for pair, event in zip(self.pending, decided, strict=True):
            if isinstance(event, str):  # refused as the live recognizer refuses it
                continue
            event.id = uuid7(self.base_ns + pair.media_apex, _entropy(self.path, pair))
            event.seq = len(self.result.events)
            event.extra["source"] = str(self.path)
            if self.clips and pair.clip is not None:
                self.clips.mkdir(parents=True, exist_ok=True)
                clip = self.clips / f"{event.id}.mp4"
                write_clip(clip, list(pair.clip), self.fps or pair.clip_fps or 25.0)
                event.extra["clip"] = str(clip)
            self.result.events.append(event)
        self.pending = []


def analyze_file(
    path: Path,
    stream: str,
    classifier: Classifier,
    params=None,
    clips: Path | None = None,
    progress=None,
    max_faces: int = 4,
) -> FileResult:
    """One video's events (see the module's docstring); `progress(n)` after every n
    frames. Never raises for a file it cannot read: the result's `error` says why."""
    result = FileResult(path, stream)
    started = time.perf_counter()
    if not path.is_file():  # a FIFO would be read until its writer closes it: forever
        result.error = "not a regular file (a pipe, a device or a socket)"
        return result
    try:
        start_s, _, fps = _probe(path)
    except Exception as e:  # PyAV raises many kinds for a file that is not a video
        result.error = f"cannot open it: {_why(e)}"
        return result
    spots = FaceSpotter(params, SIZE, max_faces=max_faces)
    pairs = StreamPairs(spots, SIZE, CLIP_MARGIN_S if clips else 0.0)
    job = _Analysis(path, stream, classifier, int(start_s * 1e9), fps, clips, result)

    def errors(_):
        result.decode_errors += 1

    covered, last = 0, None  # ns of video so far, the last frame's media time
    period = int(1e9 / fps) if fps else 0
    try:
        for frame in PyAVSource(str(path), grey=True, on_decode_error=errors):
            frame.stream, frame.t_ingest = stream, time.time_ns()
            t_media = frame.t_media or 0
            if last is not None:  # a jump counts as one frame: the clock goes on
                step = t_media - last
                covered += step if 0 <= step <= MAX_STEP_NS else period
            last = t_media
            frame.t_capture = job.base_ns + covered  # the recording's clock
            for pair in pairs.push(frame):
                pair.t_spot = time.time_ns()
                job.add(pair)
            result.frames += 1
            if progress and result.frames % 50 == 0:
                progress(50)
    except SourceError as e:
        result.error = str(e)
        result.events = []
        return result
    job.classify()
    if progress:
        progress(result.frames % 50)
    result.seconds_of_video = covered / 1e9 + (1 / fps if fps else 0)
    result.clock_jumps = pairs.spots.clock_jumps
    result.seconds_taken = time.perf_counter() - started
    return result


def _entropy(path: Path, pair: Pair) -> bytes:
    """An event id's random bits: a hash of the file's name and size and the interval."""
    stat = path.stat()
    numbers = (pair.onset, pair.apex, pair.offset)
    key = f"{path.name}|{stat.st_size}|{'|'.join(map(str, numbers))}".encode()
    return hashlib.sha256(key).digest()[:10]
