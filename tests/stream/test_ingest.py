"""Sources: PyAV decoding real files, timestamps, and reconnecting to a dead source."""

import threading

import av
import numpy as np
import pytest

from mfvan.stream.ingest import (
    Frame,
    Kind,
    PyAVSource,
    Reconnecting,
    SourceError,
    kind_of,
    open_source,
    register,
)


def _write_video(path, frames=20, fps=100, size=(64, 48), codec="libx264", gop=None):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast", "bf": "0"}
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (i * 10) % 250, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_a_file_is_decoded_with_indices_and_capture_times(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path)
    frames = list(PyAVSource(str(path), realtime=True))
    assert [f.index for f in frames] == list(range(20))
    assert frames[0].image.shape == (48, 64) and frames[0].image.dtype == np.uint8
    gaps = np.diff([f.t_capture for f in frames])
    assert np.all(np.abs(gaps - 10_000_000) < 1_000), "a file played at its rate: pts spacing"
    rgb = next(iter(PyAVSource(str(path), grey=False)))
    assert rgb.image.shape == (48, 64, 3)


def test_corrupt_packets_are_skipped_and_counted_and_decoding_goes_on(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "10"}
        rng = np.random.default_rng(0)
        for _ in range(100):  # noise: large packets, easy to hit
            img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    for k in range(5):  # garbage over five stretches of the coded pictures
        at = len(data) // 3 + k * len(data) // 15
        data[at : at + 3000] = np.random.default_rng(k).integers(0, 255, 3000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    errors = []
    source = PyAVSource(str(path), on_decode_error=errors.append)
    frames = list(source)
    assert source.decode_errors == len(errors) > 0
    assert len(frames) >= 90, "the frames around the corrupt packets still arrive"


def test_a_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="cannot open"):
        list(PyAVSource(str(tmp_path / "nothing.mp4")))


def test_a_dead_source_is_retried_with_backoff_until_it_comes_back(tmp_path):
    path = tmp_path / "late.mp4"
    errors = []
    source = Reconnecting(
        lambda: PyAVSource(str(path)),
        live=False,
        backoff_s=(0.01, 0.05),
        on_reconnect=errors.append,
    )

    def appear():
        _write_video(tmp_path / "tmp.mp4", frames=5)
        (tmp_path / "tmp.mp4").rename(path)

    timer = threading.Timer(0.1, appear)
    timer.start()
    try:
        frames = list(source)
    finally:
        timer.join()
    assert len(frames) == 5 and [f.index for f in frames] == list(range(5))
    assert source.attempts == len(errors) >= 1 and source.reconnects == 1
    assert all(isinstance(e, SourceError) for e in errors)


def test_reconnecting_gives_up_when_told_to(tmp_path):
    source = Reconnecting(
        lambda: PyAVSource(str(tmp_path / "never.mp4")), backoff_s=(0.001, 0.001), max_attempts=3
    )
    with pytest.raises(SourceError, match="gave up after 3"):
        list(source)
    assert source.attempts == 3 and source.reconnects == 0


def _first_frames(source: Reconnecting, n: int) -> list[Frame]:
    """The frames a live source yields until it is told to stop, after its `n`-th."""
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == n:
            source.stopped = True
    return frames


def test_indices_keep_counting_across_reconnects_of_a_live_source():
    calls = []

    def flaky():
        calls.append(1)
        yield Frame(index=0, t_capture=1, image=np.zeros((2, 2), np.uint8))
        yield Frame(index=1, t_capture=2, image=np.zeros((2, 2), np.uint8))
        raise SourceError("camera dropped")

    source = Reconnecting(flaky, live=True, backoff_s=(0.001, 0.001))
    got = [frame.index for frame in _first_frames(source, 5)]
    assert got == [0, 1, 2, 3, 4] and source.reconnects == 2


def test_a_files_frames_carry_media_time_from_their_pts_whatever_the_decoding_speed(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, frames=30, fps=100)
    fast = list(PyAVSource(str(path)))
    paced = list(PyAVSource(str(path), realtime=True))
    assert [f.t_media for f in fast] == [i * 10_000_000 for i in range(30)]
    assert [f.t_media for f in paced] == [f.t_media for f in fast]


def test_key_frames_mark_gop_boundaries_only_among_predicted_pictures(tmp_path):
    """H.264 with a key frame every 10 frames: frames 10 and 20 start a GOP (the first frame
    starts the stream, not a change of codec noise). FFV1 flags a key frame every 12 frames
    (its coder's reset) but every picture is intra-coded: no GOP boundary at all."""
    _write_video(tmp_path / "gop.mp4", frames=30, gop=10)
    _write_video(tmp_path / "ffv1.mkv", frames=30, codec="ffv1")
    with av.open(str(tmp_path / "ffv1.mkv")) as c:
        assert sum(f.key_frame for f in c.decode(video=0)) > 1, "FFV1 does flag key frames"
    h264 = [f.index for f in PyAVSource(str(tmp_path / "gop.mp4")) if f.key_frame]
    assert h264 == [10, 20]
    assert not any(f.key_frame for f in PyAVSource(str(tmp_path / "ffv1.mkv")))


def test_media_time_never_runs_backwards_across_a_reconnect():
    def camera():
        for i in range(3):
            yield Frame(
                index=i, t_capture=0, image=np.zeros((2, 2), np.uint8), t_media=i * 10_000_000
            )
        raise SourceError("camera dropped")

    source = Reconnecting(camera, live=True, backoff_s=(0.001, 0.001))
    times = [frame.t_media for frame in _first_frames(source, 6)]
    assert times[:3] == [0, 10_000_000, 20_000_000]
    assert all(b > a for a, b in zip(times, times[1:], strict=False)), times
    assert times[4] - times[3] == 10_000_000, "after a reopen, the source's own spacing"


def test_registered_schemes_open_with_their_factory_and_declare_their_kind():
    fake = Kind(live=True, reopen_at_end=False)
    register(
        "fake", lambda url: [Frame(image=np.zeros((1, 1), np.uint8), extra={"url": url})], fake
    )
    (frame,) = list(open_source("fake://x?y=1"))
    assert frame.extra == {"url": "fake://x?y=1"}
    assert kind_of("fake://x?y=1") == fake
    assert isinstance(open_source("/tmp/file.mp4"), PyAVSource)
    assert kind_of("/tmp/file.mp4") == Kind(live=False, reopen_at_end=False)
    for camera in ("rtsp://127.0.0.1:8554/cam", "rtsps://127.0.0.1/cam", "/dev/video0"):
        assert kind_of(camera) == Kind(live=True, reopen_at_end=True), camera


def _noisy_h264(path, pix_fmt: str, size=(632, 480), frames=3):
    """An H.264 file of noise (every luma value occurs) at a width whose rows the decoder
    pads (632 px in rows of 640 bytes)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for _ in range(frames):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_the_luma_plane_is_exactly_ffmpegs_grey_for_padded_frames(tmp_path, pix_fmt):
    """`decoded_grey` reads the decoder's luma plane (stretched from 16-235 for
    limited-range video) instead of converting with swscale, and must give the same pixels.
    nv12 is what hardware decoders give: the decoded frames are converted to it."""
    from mfvan.kernels.facespot import LIMITED_TO_FULL, decoded_grey, limited_to_full, luma_plane

    path = tmp_path / f"{pix_fmt}.mp4"
    _noisy_h264(path, "yuv420p" if pix_fmt == "nv12" else pix_fmt)
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    if pix_fmt == "nv12":
        frames = [f.reformat(format="nv12") for f in frames]
    for frame in frames:
        assert frame.format.name == pix_fmt
        assert frame.planes[0].line_size > frame.width, "the test needs padded rows"
        grey = decoded_grey(frame)
        reference = frame.to_ndarray(format="gray")
        assert grey.shape == reference.shape == (480, 632) and grey.dtype == np.uint8
        np.testing.assert_array_equal(grey, reference)
        assert np.unique(luma_plane(frame)).size > 200  # the values the table maps all occur
    every = np.arange(256, dtype=np.uint8).reshape(16, 16)  # the stretch, value by value
    np.testing.assert_array_equal(limited_to_full(every), LIMITED_TO_FULL[every])
    if pix_fmt == "yuvj420p":  # full range: the decoder's own memory, no copy
        assert np.shares_memory(decoded_grey(frames[0]), luma_plane(frames[0]))
    if pix_fmt == "yuv420p":  # a yuv420p stream flagged full-range is not stretched
        frames[0].color_range = 2
        np.testing.assert_array_equal(decoded_grey(frames[0]), frames[0].to_ndarray(format="gray"))
        np.testing.assert_array_equal(decoded_grey(frames[0]), luma_plane(frames[0]))


def test_a_source_in_another_pixel_format_is_converted_once(tmp_path):
    """RGB FFV1 (SynthME's lossless files) is not a luma format: FFmpeg converts it."""
    from mfvan.kernels.facespot import decoded_grey

    path = tmp_path / "rgb.mkv"
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert frame.format.name == "bgr0"
    np.testing.assert_array_equal(decoded_grey(frame), frame.to_ndarray(format="gray"))
