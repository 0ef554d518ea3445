"""Cameras as users have them, for `mfvan bench pipeline`: H.264 files of SynthME's camera
(`synth://`, 640 x 480, a face that wanders and leaves the frame now and then), encoded as
an IP camera encodes (libx264 at CRF 23, no B-frames, a key frame every second), played
either as files or over RTSP by GStreamer's RTSP server (`rtsp_server.py`, in Debian's
Python), one mount per camera.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DEBIAN_PYTHON = "/usr/bin/python3"  # where Debian's GStreamer bindings are importable
SERVER = Path(__file__).with_name("rtsp_server.py")
SIZE = (640, 480)
CRF = 23  # camera quality: x264's default, what IP cameras' "high quality" comes close to


def gst_rtsp_available() -> bool:
    """Whether GStreamer's RTSP server can run here (Debian's Python with its bindings)."""
    if not shutil.which(DEBIAN_PYTHON):
        return False
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    return subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True).returncode == 0


def camera_file(
    folder: Path, seed: int, fps: float, seconds: float = 20.0, container: str = "mp4"
) -> Path:
    """An MP4 (or `container`: "mpegts" for a TS segment) of `seconds` of SynthME's camera
    (seed `seed`, 8 micro-expressions per 10 s, for more latency samples) in H.264 at
    `fps`; made once, then reused."""
    import av

    from mfvan.deploy.runtime.synth_source import SynthSource

    folder = Path(folder)
    ext = "ts" if container == "mpegts" else container
    path = folder / f"camera-seed{seed}-{fps:g}fps-{seconds:g}s-crf{CRF}.{ext}"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    url = f"synth://?fps={fps:g}&seed={seed}&micro=8&realtime=0&seconds={seconds:g}"
    part = path.with_suffix(f".part.{ext}")
    with av.open(str(part), "w", format=container) as out:
        st = out.add_stream("libx264", rate=int(round(fps)))
        st.width, st.height = SIZE
        st.pix_fmt = "yuv420p"
        st.options = {"crf": str(CRF), "preset": "veryfast", "bf": "0", "g": str(int(fps))}
        for frame in SynthSource(url):
            for packet in st.encode(av.VideoFrame.from_ndarray(frame.image, format="gray")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    part.rename(path)
    return path


class RtspServer:
    """GStreamer's RTSP server serving `videos` on loopback `port`, each looping at its own
    rate; `urls` are the cameras' addresses. A context manager."""

    def __init__(self, port: int, videos: list[Path]):
        self.port, self.videos = port, [Path(v) for v in videos]
        self.urls = [f"rtsp://127.0.0.1:{port}/cam{i}" for i in range(len(self.videos))]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RtspServer:
        if not gst_rtsp_available():
            raise RuntimeError(
                "GStreamer's RTSP server is not installed (apt: gir1.2-gst-rtsp-server-1.0 "
                "python3-gst-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)"
            )
        self.proc = subprocess.Popen(
            [DEBIAN_PYTHON, str(SERVER), str(self.port), *map(str, self.videos)],
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            self.__exit__()
            raise RuntimeError(f"the RTSP server did not start (exit {self.proc.poll()})")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
