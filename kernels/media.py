"""The one decode loop: a video stream's frames with their media time and GOP boundaries,
as PyAV (FFmpeg) decodes them, for ingest (`mfvan.stream.ingest.PyAVSource`: cameras,
RTSP, files) and for `mfvan spot-eval` (`mfvan.model.spotting.spot_video`), so that both
see the same frames on the same clock.

Decoding is packet by packet: a packet the decoder refuses is skipped and reported
(`on_error`), and decoding goes on; `MAX_BAD` in a row raise `Undecodable`. A frame's media
time is its presentation time after the first frame's (`facespot.media_time_ns`); a
frame without one is a frame period after the previous one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from .facespot import GopBoundaries, media_time_ns

MAX_BAD = 100  # undecodable packets in a row that end a stream


class Undecodable(RuntimeError):
    """MAX_BAD packets in a row the decoder refused."""


class Decoded(NamedTuple):
    index: int  # from 0, in decoding order
    frame: object  # the PyAV VideoFrame (`facespot.decoded_grey` gives its grey)
    t_media: int  # ns after the first frame
    key_frame: bool  # it starts a GOP of predicted pictures (`facespot.GopBoundaries`)


def decode(
    container, stream=None, rate=None, on_error: Callable[[Exception], None] | None = None
) -> Iterator[Decoded]:
    """The frames of `stream` (default: the container's first video stream). `rate` is
    the frame rate assumed for frames without timestamps when the stream declares none."""
    import av

    stream = stream if stream is not None else container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or rate
    start_pts = media = None
    gop = GopBoundaries()
    index = bad = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError as e:
            if on_error is not None:
                on_error(e)
            bad += 1
            if bad >= MAX_BAD:
                raise Undecodable(f"{MAX_BAD} undecodable packets in a row") from e
            continue
        bad = 0
        for frame in frames:
            if start_pts is None and frame.pts is not None:
                start_pts = frame.pts
            media = media_time_ns(frame, start_pts, media, rate)
            yield Decoded(index, frame, media, gop(frame))
            index += 1
