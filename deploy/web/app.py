"""The web view's HTTP side: a Starlette application over a `Hub`.

Pages (server-rendered, a little plain JavaScript, no build step):
- `/`: a tile per camera (its live preview with the tracked face square, the spotter's
  signal over the last seconds with its threshold, state, frame rate and p99 time in the
  spot stage) and the live events as they come (label, confidence, camera, time, apex to
  event latency, onset / apex / magnified-difference images);
- `/history`: the event store, filtered by camera, label, least confidence and time;
  `/history/{id}`: one event, its snapshots and its clip.
Feeds: `/live` (Server-Sent Events: `hello`, `status`, `event`),
`/cameras/{name}/preview.mjpg` (MJPEG, produced only while someone watches) and
`preview.jpg`, `/media/{id}/{onset,apex,difference}.png|clip.mp4`, `/api/cameras`,
`/api/events`, `/metrics` (the view's own: browsers, lost messages, memory), `/healthz`.

Security: faces (previews and crops) are served only when the view was started with
them (`faces`), since they show people; with a `token`, every request needs it
(`Authorization: Bearer`, or `?token=` once, which sets an HttpOnly cookie); without one,
only requests addressed to a loopback host name are answered (a web page elsewhere
cannot reach the view through DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from mfvan.stream.security import is_loopback

from .hub import IMAGES, Hub, finite, sse

HERE = Path(__file__).parent
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing the feed
BOUNDARY = b"mfvanframe"
COOKIE = "mfvan_token"
HISTORY_LIMIT = 200
NO_FACES = "face images are off: start the view with --faces (mfvan web) or --web-faces (run)"


def create_app(hub: Hub, token: str | None = None, metrics=None, ready=None) -> Starlette:
    """The view's ASGI app over `hub`; `token`: what every request must carry (None:
    loopback only); `metrics`: the view's series (`ViewMetrics`; made here without one);
    `ready`: an event set once the hub has started (the `--metrics-port` server's /ready)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["iso"] = _iso

    metrics = metrics or ViewMetrics(hub)
    routes = [
        *_live_routes(hub, templates, metrics),
        *_preview_routes(hub, metrics),
        *_history_routes(hub, templates),
        *_api_routes(hub, metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = []
    if token is None:  # loopback only: answer only requests that name a loopback host
        middleware.append(Middleware(LoopbackHosts))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await hub.start()
        if ready is not None:
            ready.set()
        try:
            yield
        finally:
            await hub.stop()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    return TokenGate(app, token) if token else app


def _live_routes(hub: Hub, templates, metrics) -> list[Route]:
    """The cameras page, the live feed (SSE) and the previews."""

    async def cameras_page(request: Request):
        now = time.monotonic()
        return templates.TemplateResponse(
            request,
            "cameras.html",
            {
                "cameras": [c.summary(now) for c in _sorted(hub.cameras.values())],
                "events": list(reversed(hub.recent)),
                "faces": hub.faces,
                "db": hub.db,
            },
        )

    async def live(request: Request):
        from .hub import Client

        client = Client()
        hub.clients.add(client)
        metrics.clients.set(len(hub.clients))
        now = time.monotonic()
        hello = {
            "cameras": [c.summary(now) for c in _sorted(hub.cameras.values())],
            "events": list(hub.recent),
            "faces": hub.faces,
        }

        async def feed():
            try:
                yield sse("hello", hello)
                while True:
                    try:
                        kind, data = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        yield b": still here\n\n"
                        continue
                    if kind == "bye":  # the server is stopping (`Hub.close_feeds`)
                        return
                    yield sse(kind, data)
            finally:
                hub.clients.discard(client)
                metrics.clients.set(len(hub.clients))
                metrics.lost.inc(client.lost)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(feed(), media_type="text/event-stream", headers=headers)

    return [
        Route("/", cameras_page),
        Route("/live", live),
    ]


def _preview_routes(hub: Hub, metrics) -> list[Route]:
    """Each camera's preview: MJPEG while it is watched, or its latest JPEG."""

    async def preview_mjpeg(request: Request):
        if not hub.faces:
            return PlainTextResponse(NO_FACES, 403)
        cam = hub.watch(request.path_params["name"])
        if cam is None:
            return PlainTextResponse(f"no camera {request.path_params['name']!r}", 404)
        metrics.watchers.inc()

        async def frames():
            sent = -1
            try:
                while not hub.closing:
                    if cam.jpeg is not None and cam.frame_no != sent:
                        sent, jpeg = cam.frame_no, cam.jpeg
                        head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        yield head % (BOUNDARY, len(jpeg)) + jpeg + b"\r\n"
                        metrics.frames.inc()
                    waiter = cam.new_frame
                    try:
                        await asyncio.wait_for(waiter.wait(), 5.0)
                    except asyncio.TimeoutError:
                        pass
            finally:
                hub.unwatch(cam)
                metrics.watchers.dec()

        media = f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
        return StreamingResponse(frames(), media_type=media, headers={"Cache-Control": "no-store"})

    async def preview_jpeg(request: Request):
        if not hub.faces:
            return PlainTextResponse(NO_FACES, 403)
        cam = hub.cameras.get(request.path_params["name"])
        if cam is None or cam.jpeg is None:
            return PlainTextResponse("no preview of this camera yet (is a tile open?)", 404)
        return Response(cam.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    return [
        Route("/cameras/{name}/preview.mjpg", preview_mjpeg),
        Route("/cameras/{name}/preview.jpg", preview_jpeg),
    ]


def _history_routes(hub: Hub, templates) -> list[Route]:
    """The stored events: their pages and their images and clips."""

    async def media(request: Request):
        if not hub.faces:
            return PlainTextResponse(NO_FACES, 403)
        event_id, name = request.path_params["id"], request.path_params["name"]
        stem, _, ext = name.partition(".")
        if stem in IMAGES and ext == "png":
            png = await run_in_threadpool(hub.image, event_id, stem)
            if png is not None:
                return Response(png, media_type="image/png")
        elif name == "clip.mp4":
            path = await run_in_threadpool(hub.stored_file, event_id, name)
            if path is not None:
                return FileResponse(path, media_type="video/mp4")
        return PlainTextResponse(f"no {name} for event {event_id}", 404)

    async def history(request: Request):
        q = request.query_params
        if hub.db is None:
            listed, error, choices = [], "no event store: start the view with --db", {}
        else:
            listed, error, choices = await run_in_threadpool(_history, hub, q)
        return templates.TemplateResponse(
            request,
            "history.html",
            {
                "events": listed,
                "error": error,
                "choices": choices,
                "q": {k: q.get(k, "") for k in ("stream", "label", "min_confidence", "since")},
                "faces": hub.faces,
                "limit": HISTORY_LIMIT,
            },
        )

    async def history_event(request: Request):
        event_id = request.path_params["id"]
        event = await run_in_threadpool(hub.stored_event, event_id)
        if event is None:
            event = next((e for e in hub.recent if e["id"] == event_id), None)
        if event is None:
            return PlainTextResponse(f"no event {event_id}", 404)
        names = {Path(p).name for p in event.get("snapshots", [])}
        return templates.TemplateResponse(
            request,
            "event.html",
            {
                "e": event,
                "faces": hub.faces,
                "images": [
                    n for n in IMAGES if f"{n}.png" in names or n in event.get("images", [])
                ],
                "clip": "clip.mp4" in names,
                "fields": {k: v for k, v in event.items() if k not in ("snapshots", "images")},
            },
        )

    return [
        Route("/media/{id}/{name}", media),
        Route("/history", history),
        Route("/history/{id}", history_event),
    ]


def _api_routes(hub: Hub, metrics) -> list[Route]:
    """The JSON API, health and the view's own metrics."""

    async def api_cameras(request: Request):
        now = time.monotonic()
        return JSONResponse(finite([c.summary(now) for c in _sorted(hub.cameras.values())]))

    async def api_events(request: Request):
        return JSONResponse(finite(list(hub.recent)))

    async def healthz(request: Request):
        return JSONResponse({"ok": True, "counts": hub.counts, "browsers": len(hub.clients)})

    async def metrics_page(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/api/cameras", api_cameras),
        Route("/api/events", api_events),
        Route("/healthz", healthz),
        Route("/metrics", metrics_page),
    ]


class ViewMetrics:
    """The view's own series (served at its /metrics, and on `mfvan web --metrics-port`,
    where `mfvan run`'s aggregate /metrics reads them)."""

    def __init__(self, hub: Hub):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            PlatformCollector,
            ProcessCollector,
        )

        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.clients = Gauge("mfvan_web_browsers", "Browsers on the live feed.", registry=r)
        self.watchers = Gauge("mfvan_web_previews", "Camera previews being watched.", registry=r)
        self.frames = Counter("mfvan_web_preview_frames", "Preview frames sent.", registry=r)
        self.lost = Counter(
            "mfvan_web_lost_messages",
            "Live messages a browser too slow to read them lost (counted when it leaves).",
            registry=r,
        )
        received = Gauge(
            "mfvan_web_received", "Messages the view received, by kind.", ["kind"], registry=r
        )
        for kind in hub.counts:
            received.labels(kind).set_function(lambda k=kind: hub.counts[k])


class LoopbackHosts:
    """ASGI middleware: only requests whose Host names a loopback address (127.0.0.1,
    localhost, [::1], any port) are answered; others get 400. A page on another site that
    points its own name at 127.0.0.1 (DNS rebinding) sends its name, and is refused."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if not is_loopback(name):
                response = PlainTextResponse(f"400: not a loopback host: {host!r:.80}", 400)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class TokenGate:
    """ASGI middleware: every request carries `token` (`Authorization: Bearer`, the
    cookie, or `?token=`, answered with a redirect that sets the cookie and drops it from
    the address), or gets 401."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None  # RFC 7235: any case
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode())
        if self._ok((query.pop("token", [None]))[0]):
            rest = urlencode(query, doseq=True)
            # this site's own path: `//host/x` (or `/\\host`) would send the browser away
            path = "/" + scope["path"].lstrip("/\\")
            response = RedirectResponse(path + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict")
            return await response(scope, receive, send)
        response = PlainTextResponse("401: this view needs its token (?token=...)", 401)
        return await response(scope, receive, send)


def _sorted(cameras):
    return sorted(cameras, key=lambda c: c.name)


def _iso(t: float | None) -> str:
    from mfvan.stream.client import iso

    return iso(int(t * 1e9))[:19].replace("T", " ") if t else ""


def _history(hub: Hub, q) -> tuple[list[dict], str | None, dict]:
    """The store's events matching the query's filters (newest first, at most
    HISTORY_LIMIT), an error to show, and the cameras and labels to choose from."""
    import argparse

    from mfvan.deploy.commands.events import when
    from mfvan.stream.outputs.store import EventStore, StoreError

    filters, error = {}, None
    try:
        if q.get("stream"):
            filters["stream"] = q["stream"]
        if q.get("label"):
            filters["label"] = q["label"]
        if q.get("min_confidence"):
            filters["min_confidence"] = float(q["min_confidence"])
        if q.get("since"):
            filters["since"] = when(q["since"])
    except (ValueError, argparse.ArgumentTypeError) as e:
        return [], f"filter not understood: {e}", {}
    try:
        with EventStore(hub.db, readonly=True) as store:
            listed = store.query(**filters, limit=HISTORY_LIMIT, newest_first=True)
            choices = {"stream": store.distinct("stream"), "label": store.distinct("label")}
    except StoreError as e:
        return [], str(e), {}
    for e in listed:
        e["images"] = [n for n in IMAGES if any(p.endswith(f"/{n}.png") for p in e["snapshots"])]
    return listed, error, choices
