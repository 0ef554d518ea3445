"""`mfvan web`: the live web view of a running pipeline (`mfvan.deploy.web`).

    mfvan web --events ipc:///run/mfvan/events.ipc --watch ipc:///run/mfvan/watch-0.ipc \\
        --db events.db --metrics http://127.0.0.1:9100/metrics --faces

`mfvan run --web 127.0.0.1:8321` starts one as a child, wired to the run's endpoints.
It binds 127.0.0.1 unless told otherwise; any other address needs a token (environment
variable MFVAN_WEB_TOKEN, or --token-file), which every request must then carry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "the live web view: cameras, events as they happen, history"
DEFAULT_BIND = "127.0.0.1:8321"
TOKEN_ENV = "MFVAN_WEB_TOKEN"
MIN_TOKEN = 16  # characters


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", help="the recognizer's event endpoint (live events)")
    p.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="a spot stage's watch endpoint (`mfvan spot --watch`), once per spot process",
    )
    p.add_argument("--db", type=Path, help="the event store to browse (history, snapshots)")
    p.add_argument("--metrics", help="the run's /metrics URL (each camera's fps and p99)")
    p.add_argument("--camera", action="append", default=[], help="a camera to show from the start")
    p.add_argument(
        "--metrics-port",
        type=stage.port,
        default=-1,
        help="also serve the view's /metrics (and /ready, /live) on this loopback port, as the "
        "stages do, for `mfvan run`'s aggregate (default -1: only on the view's own address)",
    )
    add_web_options(p, bind_flag="--bind", faces_flag="--faces")
    p.add_argument(
        "--keys", type=Path, help="CURVE keys folder (subscriber.key_secret, server.key)"
    )
    stage.add_logging(p)


def add_web_options(p, bind_flag: str, faces_flag: str, default: str | None = DEFAULT_BIND) -> None:
    """The view's address and face switch (`mfvan run` offers them as --web, --web-faces)."""
    p.add_argument(
        bind_flag,
        default=default,
        metavar="HOST:PORT",
        help=f"where to serve (default: {default or 'no web view'}); an address that is not "
        f"loopback needs a token in ${TOKEN_ENV} or --token-file",
    )
    p.add_argument(
        faces_flag,
        action="store_true",
        help="show camera previews and face images (off by default: they show people's "
        "faces); then a token is needed even on loopback: without one given, one is made and "
        "the address to open (with it) is logged",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help=f"a file holding the view's access token (or ${TOKEN_ENV}; at least {MIN_TOKEN} "
        "characters)",
    )


def address(text: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be [v6]) -> (host, port), or `stage.Fatal`."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise stage.Fatal(f"web address {text!r} is not HOST:PORT (e.g. 127.0.0.1:8321)")
    return host, int(port)


def token(token_file: Path | None) -> str | None:
    """The access token: the file's first line, or $MFVAN_WEB_TOKEN; None without one."""
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as e:
            raise stage.Fatal(f"--token-file {token_file}: {e.strerror}") from None
    else:
        text = os.environ.get(TOKEN_ENV, "").strip()
    if text and len(text) < MIN_TOKEN:
        raise stage.Fatal(f"the web view's token is {len(text)} characters; use {MIN_TOKEN}+")
    return text or None


def check_bind(bind: str, secret: str | None) -> tuple[str, int]:
    """The address to serve on, refused (`stage.Fatal`) when it is not loopback and there is
    no token: the view shows events and, with faces on, people's faces."""
    from mfvan.stream.security import is_loopback

    host, port = address(bind)
    if not is_loopback(host) and secret is None:
        raise stage.Fatal(
            f"refusing to serve the web view on {bind} without a token: it is not a loopback "
            f"address. Set ${TOKEN_ENV} (or --token-file) to a secret of {MIN_TOKEN}+ "
            "characters, or bind 127.0.0.1"
        )
    return host, port


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mfvan.deploy.web.app import ViewMetrics, create_app
    from mfvan.deploy.web.hub import Hub

    stage.setup_logging("web", "-", args.log_format)
    secret = token(args.token_file)
    host, port = check_bind(args.bind, secret)
    made = args.faces and secret is None
    if made:  # faces even on loopback: another user of this machine must not see them
        import secrets

        secret = secrets.token_urlsafe(24)
    stage.check_endpoints(args, *([args.events] if args.events else []), *args.watch)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise stage.Fatal(f"cannot serve the web view on {args.bind}: {e.strerror}") from None
    hub = Hub(
        events=args.events,
        watch=args.watch,
        db=args.db,
        metrics_url=args.metrics,
        faces=args.faces,
        cameras=args.camera,
        keys=args.keys,
    )
    view_metrics, ready = ViewMetrics(hub), None
    if args.metrics_port >= 0:
        from mfvan.stream.metrics import Metrics

        served = Metrics("web")  # its /ready and /live, serving the view's series
        stage.serve_metrics(served, args.metrics_port, registry=view_metrics.registry)
        ready = served.ready
    app = create_app(hub, secret, metrics=view_metrics, ready=ready)
    shown = f"[{host}]" if ":" in host else host
    stage.log.info(
        "web: http://%s:%d/%s (faces %s%s)",
        shown,
        port,
        f"?token={secret}" if made else "",  # the address to open: it sets the cookie
        "on" if args.faces else "off",
        ", token required: this one was made for this run"
        if made
        else (", token required" if secret else ""),
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="on",
        http=_guarded_protocol(),
    )
    server = _server_class()(config)
    server.hub = hub
    server.run(sockets=[sock])
    return 0


HEADER_TIMEOUT_S = 10.0  # a request's headers must be whole this long after it starts


def _guarded_protocol():
    """uvicorn's HTTP/1.1 protocol with what it lacks against half-open requests
    (slowloris held every connection until the process ran out of its 20,000 file
    descriptors, before any token check): a connection is closed when its request's
    headers are not whole within `HEADER_TIMEOUT_S` (the first request, or the next one on
    a kept-alive connection), and one past the cap (`max_connections`) is closed at once."""
    import resource

    from uvicorn.protocols.http.h11_impl import H11Protocol

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = 1000 if soft == resource.RLIM_INFINITY else max(16, min(1000, soft - 64))

    class Guarded(H11Protocol):
        max_connections = cap
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > self.max_connections:
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection, as well

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._expired)

        def _expired(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no whole request
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return Guarded


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which ends the view's feeds when it is told to stop, before
        waiting for its connections: a feed never ends on its own, and uvicorn cancelled
        them after its grace period, with an error line and their tracebacks."""

        hub = None

        def handle_exit(self, sig, frame) -> None:
            try:  # a signal handler, in the loop's own thread
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if self.hub is not None and loop is not None:
                loop.call_soon_threadsafe(self.hub.close_feeds)
            super().handle_exit(sig, frame)

    return Server
