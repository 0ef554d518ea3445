"""A GStreamer RTSP server (gst-rtsp-server, as packaged by Debian), for the tests and for
`mfvan bench pipeline --source rtsp`. It runs in Debian's own Python, where the GStreamer
bindings live, never in mfvan's environment (nothing imports this module):

    /usr/bin/python3 rtsp_server.py PORT VIDEO.mp4 [VIDEO.mp4 ...] [--jump AFTER_S:BACK_S]

serves the H.264 of each VIDEO.mp4, looping, at its own frame rate, as a camera would:
the first at rtsp://127.0.0.1:PORT/test, and the i-th (from 0) at
rtsp://127.0.0.1:PORT/cam<i>. Prints "ready" once it listens. Loopback only.

`--jump AFTER_S:BACK_S`: a camera whose clock jumps back mid-session (it reset its clock,
or plays recordings joined end to end): AFTER_S seconds after a stream starts, its RTP
timestamps go back BACK_S seconds while its frames keep their pace (a running-time
offset on a pad after `clocksync`, which paces them; the server's sinks then send what
they see as late at once). GStreamer re-times joined files itself, so serving joined
recordings never shows a jump.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def _factory(video: str, jump: tuple[float, float] | None = None):
    factory = GstRtspServer.RTSPMediaFactory()
    shift = "clocksync ! identity name=shift ! " if jump else ""
    factory.set_launch(
        f"( multifilesrc location={video} loop=true ! qtdemux ! h264parse ! {shift}"
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    if jump:
        after_s, back_s = jump

        def configure(factory, media):
            pad = media.get_element().get_by_name("shift").get_static_pad("src")

            def back():
                pad.set_offset(-int(back_s * Gst.SECOND))
                print(f"jumped back {back_s} s", flush=True)
                return False  # once

            GLib.timeout_add(int(after_s * 1000), back)

        factory.connect("media-configure", configure)
    return factory


def main() -> None:
    args = sys.argv[1:]
    jump = None
    if "--jump" in args:
        i = args.index("--jump")
        after_s, back_s = args[i + 1].split(":")
        jump = (float(after_s), float(back_s))
        del args[i : i + 2]
    port, videos = args[0], args[1:]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    mounts = server.get_mount_points()
    mounts.add_factory("/test", _factory(videos[0], jump))
    for i, video in enumerate(videos):
        mounts.add_factory(f"/cam{i}", _factory(video))
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
