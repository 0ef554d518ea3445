"""A GStreamer RTSP server (gst-rtsp-server, as packaged by Debian), for the tests and for
`mfvan bench pipeline --source rtsp`. It runs in Debian's own Python, where the GStreamer
bindings live, never in mfvan's environment (nothing imports this module):

    /usr/bin/python3 rtsp_server.py PORT VIDEO.mp4 [VIDEO.mp4 ...]

serves the H.264 of each VIDEO.mp4, looping, at its own frame rate, as a camera would:
the first at rtsp://127.0.0.1:PORT/test, and the i-th (from 0) at
rtsp://127.0.0.1:PORT/cam<i>. Prints "ready" once it listens. Loopback only.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def _factory(video: str):
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( multifilesrc location={video} loop=true ! qtdemux ! h264parse "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    return factory


def main() -> None:
    port, videos = sys.argv[1], sys.argv[2:]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    mounts = server.get_mount_points()
    mounts.add_factory("/test", _factory(videos[0]))
    for i, video in enumerate(videos):
        mounts.add_factory(f"/cam{i}", _factory(video))
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
