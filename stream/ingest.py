"""Sources of frames: one small interface, and PyAV behind it for rtsp://, files and
cameras. `deploy` registers `synth://` (SynthME's live frames) with `register`, so this
package never imports `model`.

A source yields `Frame`s: a grey or RGB uint8 image, its index in the source, its media
time and its capture time, both in ns.
- Media time (`t_media`) is the frame's presentation time from the stream's first frame:
  PTS x time base from a file, the RTP clock (which FFmpeg turns into PTS) from RTSP, the
  source's own clock for `synth://`. The spotter works in it, so a file gives the same
  intervals at any CPU load and replay speed. Across a reconnect it goes on from where it
  stopped plus the wall time the source was away, so it never runs backwards.
- Capture time (`t_capture`) is on the wall clock (`time.time_ns()`), for latency only:
  when a live frame arrived; for a file, the moment the frame is due when played at its
  native rate, or when it was decoded when played as fast as possible.
- `key_frame`: the frame starts a GOP (a key frame among predicted pictures; never in an
  intra-only codec such as FFV1, `mfvan.kernels.facespot.GopBoundaries`).
`Reconnecting` wraps any source factory: when the source fails (a camera drops, a
network times out) it waits with exponential backoff (0.1 s doubling to at most 0.5 s,
so a camera that comes back is read again within about a second: the wait, then RTSP's
handshake and the first key frame) and opens it again; the frame index keeps counting
across reconnects, and every wait ends at once when the stage is told to stop.

Failures are of two kinds. Recoverable: a camera or RTSP server that does not answer or
drops, retried for as long as the stage runs. Fatal: a source that can never work (a
missing file, a folder, a file FFmpeg cannot read, a URL that cannot be parsed), found by
`check_source` or the first open: one line naming the source, no retry.

Credentials: a URL's password never appears in a log line, an error or a metric label
(`redact`); `env:NAME` as a source reads the URL from the environment variable NAME, so
that it is not in any process's argv either (`mfvan run` hands every source to its ingest
processes that way).

Imports nothing of this project but `mfvan.kernels` (media time and GOP boundaries of a
decoded frame).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

from mfvan.kernels.facespot import decoded_grey
from mfvan.kernels.media import Undecodable, decode

from .messages import Frame  # what a source yields: the frame message, before its stream

log = logging.getLogger("mfvan.ingest")


class SourceError(RuntimeError):
    """The source cannot be opened or stopped delivering frames."""


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunparse(parts._replace(netloc=netloc))


def resolve(source: str) -> str:
    """A source as given: `env:NAME` is the URL in environment variable NAME."""
    if not source.startswith("env:"):
        return source
    name = source[len("env:") :]
    if not os.environ.get(name):
        raise SourceError(f"source {source}: the environment variable {name} is not set")
    return os.environ[name]


def check_source(url: str) -> None:
    """Raise `SourceError` (fatal: retrying cannot help) for a source that can never
    work: a missing file, a folder, an RTSP URL without a host. A camera or server that
    does not answer now is not checked here: it may come back."""
    scheme = urlparse(url).scheme
    if scheme in _SCHEMES:
        return
    if url.startswith(("rtsp://", "rtsps://")):
        if not urlparse(url).hostname:
            raise SourceError(f"{redact(url)}: an RTSP URL needs a host (rtsp://HOST/path)")
        return
    if url.startswith("/dev/video") or "://" in url:
        return  # a device that may appear, or another protocol FFmpeg opens
    if os.path.isdir(url):
        raise SourceError(f"{url} is a folder, not a video file")
    if not os.path.exists(url):
        raise SourceError(f"cannot open {url}: no such file")


class PyAVSource:
    """Decodes with PyAV (FFmpeg): `rtsp://` (TCP transport), any file FFmpeg reads,
    `/dev/videoN` (V4L2). `realtime`: a file plays at its native rate instead of as fast
    as possible (live sources always run at their own rate). `fps`: the frame rate asked
    of a V4L2 camera, and the rate assumed for frames without timestamps when the stream
    declares none. A packet the decoder refuses is skipped and counted (`decode_errors`,
    `on_decode_error(error)`)."""

    def __init__(
        self,
        url: str,
        grey: bool = True,
        realtime: bool = False,
        timeout_s: float = 5.0,
        on_decode_error: Callable[[Exception], None] | None = None,
        fps: float | None = None,
    ):
        self.url = url
        self.fps = fps
        self.on_decode_error = on_decode_error or (lambda error: None)
        self.decode_errors = 0
        self.grey = grey
        self.realtime = realtime
        self.timeout_s = timeout_s
        self.live = kind_of(url).live

    def _open(self):
        import av

        options, kwargs = {}, {"timeout": (self.timeout_s, self.timeout_s)}
        if self.url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        if self.url.startswith("/dev/video"):
            kwargs["format"] = "v4l2"
            if self.fps:
                options["framerate"] = f"{self.fps:g}"
        try:
            return av.open(self.url, options=options, **kwargs)
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"cannot open {redact(self.url)}: {_reason(e)}") from None

    def __iter__(self) -> Iterator[Frame]:
        import av

        container = self._open()
        image = decoded_grey if self.grey else (lambda f: f.to_ndarray(format="rgb24"))
        start_wall = time.time_ns()
        media = None
        try:
            stream = container.streams.video[0]
            # slice threads only: frame threads hold frames back (a frame per thread, 5 ms
            # each at 200 fps) and cost 40% more CPU on a 640 x 480 camera (0.63 against
            # 0.45-0.49 ms a frame); parallelism comes from a process per camera
            stream.thread_type = "SLICE"
            for index, frame, media, key in decode(container, stream, self.fps, self._refused):
                if self.realtime and not self.live:
                    t = start_wall + media
                    wait = t - time.time_ns()
                    if wait > 0:
                        time.sleep(wait / 1e9)
                else:
                    t = time.time_ns()
                yield Frame(
                    index=index, t_capture=t, image=image(frame), t_media=media, key_frame=key
                )
            if not self.live:
                self._check_whole(stream, media)
        except Undecodable as e:
            raise SourceError(f"{redact(self.url)}: {e}") from e
        except av.FFmpegError as e:
            raise SourceError(f"{redact(self.url)} stopped: {_reason(e)}") from None
        finally:
            container.close()

    def _refused(self, error: Exception) -> None:
        """A packet the decoder refused: skipped, counted."""
        self.decode_errors += 1
        self.on_decode_error(error)

    def _check_whole(self, stream, last_ns: int | None) -> None:
        """Warn when a file ended well before the duration its container declares (a
        truncated recording)."""
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = int(stream.duration * stream.time_base * 1e9)
        elif stream.container.duration is not None:
            declared = int(stream.container.duration * 1e3)  # AV_TIME_BASE is 1e6
        frame_ns = 1e9 / float(stream.average_rate or 25)
        if declared and (last_ns or 0) + 2 * frame_ns < 0.95 * declared:
            log.warning(
                "%s ended at %.2f s of the %.2f s it declares: the file looks truncated",
                redact(self.url),
                (last_ns or 0) / 1e9,
                declared / 1e9,
            )


def _reason(error: Exception) -> str:
    """An FFmpeg error's words without the URL PyAV appends (it may hold a password)."""
    return getattr(error, "strerror", None) or type(error).__name__


Factory = Callable[[str], object]


@dataclass(frozen=True)
class Kind:
    """How a kind of source behaves, which the ingest stage acts on.

    live: frames come at the source's own pace: never waited for (a slow consumer loses
    frames, counted), and a failure is retried for as long as the stage runs.
    reopen_at_end: an end of stream is a failure too (a camera that stopped sending), not
    the end of the source (a file, a finite `synth://` stream)."""

    live: bool
    reopen_at_end: bool


CAMERA = Kind(live=True, reopen_at_end=True)  # rtsp://, rtsps://, /dev/videoN
FILE = Kind(live=False, reopen_at_end=False)  # anything else FFmpeg reads
_PYAV_PREFIXES = {"rtsp://": CAMERA, "rtsps://": CAMERA, "/dev/video": CAMERA}
_SCHEMES: dict[str, tuple[Factory, Kind]] = {}


def register(scheme: str, factory: Factory, kind: Kind) -> None:
    """Make `scheme://...` URLs open with `factory(url)` (an iterable of `Frame`s) and
    behave as `kind`."""
    _SCHEMES[scheme] = (factory, kind)


def kind_of(url: str) -> Kind:
    """What a URL's source is: a registered scheme's kind, a camera, else a file."""
    scheme = urlparse(url).scheme
    if scheme in _SCHEMES:
        return _SCHEMES[scheme][1]
    return next((k for prefix, k in _PYAV_PREFIXES.items() if url.startswith(prefix)), FILE)


def open_source(url: str, **kwargs):
    """The source for a URL: a registered scheme's factory, else PyAV."""
    scheme = urlparse(url).scheme
    if scheme in _SCHEMES:
        return _SCHEMES[scheme][0](url)
    return PyAVSource(url, **kwargs)


class Reconnecting:
    """Frames from `open_()` sources, reopened with exponential backoff after each failure
    (or end, for live sources). `on_reconnect(error)` is called before each new attempt
    (`error` None: the stream ended), `on_back(attempts)` when frames come again after
    failures. Every wait ends as soon as `stop` is set."""

    def __init__(
        self,
        open_: Callable[[], object],
        live: bool = True,
        backoff_s: tuple[float, float] = (0.1, 0.5),
        on_reconnect: Callable[[Exception | None], None] | None = None,
        max_attempts: int | None = None,
        on_back: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ):
        self.open_ = open_
        self.live = live
        self.backoff_s = backoff_s
        self.on_reconnect = on_reconnect or (lambda error: None)
        self.on_back = on_back or (lambda attempts: None)
        self.max_attempts = max_attempts
        self.reconnects = 0  # times frames came again after a failure
        self.attempts = 0  # times a failed source was tried again
        self.stop = stop or threading.Event()

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    @stopped.setter
    def stopped(self, value: bool) -> None:
        if value:
            self.stop.set()

    def __iter__(self) -> Iterator[Frame]:
        delay = self.backoff_s[0]
        index = 0
        failures = 0
        base_ns = 0  # media time at which the current opening starts
        last_ns = last_wall = None
        while not self.stop.is_set():
            error = None
            if last_ns is not None:  # reopened: media time goes on, plus the time away
                base_ns = last_ns + max(time.time_ns() - last_wall, 1)
            try:
                for frame in self.open_():
                    frame.index = index
                    index += 1
                    if frame.t_media is not None:
                        frame.t_media += base_ns
                        last_ns, last_wall = frame.t_media, time.time_ns()
                    if failures:
                        self.reconnects += 1
                        self.on_back(failures)
                    delay, failures = self.backoff_s[0], 0
                    yield frame
                    if self.stop.is_set():
                        return
                if not self.live:
                    return  # a file ended: done
            except SourceError as e:
                error = e
            failures += 1
            if self.max_attempts is not None and failures > self.max_attempts:
                if self.max_attempts == 0:
                    raise error
                raise SourceError(f"gave up after {self.max_attempts} attempts: {error}")
            self.attempts += 1
            self.on_reconnect(error or "the stream ended")
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff_s[1])
