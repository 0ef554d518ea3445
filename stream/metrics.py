"""Prometheus metrics of every stage, in one registry per process, served on `/metrics`.

Names follow Prometheus conventions: `mfvan_` prefix, `_total` for counters, `_seconds`
for durations, base units. Labels: `stage` (ingest | spot | recognize), `stream` (the
camera), `reason` for drops and refusals. Latency histograms (by `stage` and `stream`,
so a dashboard shows one camera's latency): each stage's own time
(`mfvan_stage_seconds`, from the message's arrival to its departure), the time from the
previous stage (`mfvan_transit_seconds`), end to end from capture
(`mfvan_end_to_end_seconds`), and inference (`mfvan_inference_seconds`).

`serve(port, host)` binds to loopback by default: faces are biometric data, and metrics
name the streams. It answers three paths, as systemd, k8s and `mfvan run` expect:
`/metrics` (Prometheus), `/live` (200 while the process serves at all) and `/ready` (200
once the stage has bound its sockets and compiled what it needs, `ready.set()`; 503
before); any other path is 404. The same state is the gauge `mfvan_ready{stage}` (0, then
1), so a dashboard sees a stage that is up but still starting.

Besides mfvan's own, each process's registry has prometheus_client's `process_*` (CPU
seconds, resident memory, open files) and `python_info`, and `mfvan_build_info{version,
model}`.

`fetch(url, timeout_s)` is the other side: what reads these endpoints (`mfvan run`, the
web view, the benchmarks), None for any way of not answering.

Per-stream series are created at zero when a stream appears (`init_stream`) and removed
when the stage forgets it (`forget_stream`: the stream ended or went idle), so a stage
that sees many streams over its life does not keep a series for each forever.

Imports nothing of this project.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger("mfvan.metrics")

# from 0.5 ms to 10 s: inference of one pair is ms, end to end includes the apex's wait
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("ingest", "spot", "recognize")  # the stage processes, in the frames' order


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mfvan")
    except PackageNotFoundError:
        return "unknown"


def fetch(url: str, timeout_s: float) -> str | None:
    """The text of `url` (a stage's `/metrics` or `/ready`, an endpoint like them), or None
    when it does not answer 200 in full: refused or timed out (not serving, or not any
    more), an error status (`/ready`'s 503 while starting), an answer cut off or not HTTP at
    all (a process being stopped), a body that is not text. One definition of "did not
    answer" for every reader of these endpoints."""
    import http.client
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.read().decode()
    except (OSError, ValueError, http.client.HTTPException):
        return None


class Server(ThreadingHTTPServer):
    """The stages' HTTP server (/metrics, /live, /ready), hardened for a port anyone on
    the host can reach: at most `MAX_CONNECTIONS` at once (one more is closed at once,
    before any thread is made for it), each given `TIMEOUT_S` a read or write (a client
    that trickles, or never finishes its request, is cut off), and a client that goes away
    mid-answer is no traceback (a scraper's timeout, `make demo`'s /ready poll)."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst is accepted (and refused) at once
    MAX_CONNECTIONS = 32
    TIMEOUT_S = 10.0

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self.refused = 0  # connections closed at once: too many open

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        request.settimeout(self.TIMEOUT_S)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: its loss alone
        log.warning("metrics server: %s from %s", error, client_address[0], exc_info=True)


class _Ready(threading.Event):
    """An event that also sets the `mfvan_ready` gauge."""

    def __init__(self, gauge):
        super().__init__()
        self.gauge = gauge
        gauge.set(0)

    def set(self) -> None:
        super().set()
        self.gauge.set(1)

    def clear(self) -> None:
        super().clear()
        self.gauge.set(0)


class Metrics:
    """Every metric a stage may update; unused ones simply stay at zero."""

    def __init__(self, stage: str, registry: CollectorRegistry | None = None):
        self.stage = stage
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:  # the process's own: CPU, memory, open files; Python's version
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.build_info = Gauge(
            "mfvan_build_info",
            "1, labelled with mfvan's version and the model the stage runs ('' but in the "
            "recognizer).",
            ["version", "model"],
            registry=r,
        )
        self.set_model("")
        # set by the stage once it can do its work (/ready answers 200 from then on)
        self.ready = _Ready(
            Gauge(
                "mfvan_ready",
                "1 once the stage can do its work (sockets bound, kernels compiled), else 0.",
                ["stage"],
                registry=r,
            ).labels(stage)
        )
        self._flow(r)
        self._sources(r)
        self._recognition(r)
        self._timing(r)
        self._outputs_and_supervision(r)

        if stage in STAGES:
            for reason in ("malformed", "version", "schema", "streams", "error"):
                self.dropped.labels(stage, "", reason)
            self.queue_depth.labels(stage)

    def _flow(self, r: CollectorRegistry) -> None:
        """Messages through the stages and what was dropped."""
        self.frames_in = Counter(
            "mfvan_frames_in", "Messages received by a stage.", ["stage", "stream"], registry=r
        )
        self.frames_out = Counter(
            "mfvan_frames_out", "Messages sent on by a stage.", ["stage", "stream"], registry=r
        )
        self.dropped = Counter(
            "mfvan_frames_dropped",
            "Messages dropped, by reason (hwm: the consumer was slow; malformed, version, "
            "schema: not a message of ours or not one this stage takes; streams: one stream "
            "too many; error: the stage failed on it; unauthorized: refused handshakes).",
            ["stage", "stream", "reason"],
            registry=r,
        )

    def _sources(self, r: CollectorRegistry) -> None:
        """What the sources and the tracker report."""
        self.decode_errors = Counter(
            "mfvan_decode_errors", "Frames the decoder failed on.", ["stream"], registry=r
        )
        self.reconnects = Counter(
            "mfvan_reconnects",
            "Times a source delivered frames again after failing.",
            ["stream"],
            registry=r,
        )
        self.reconnect_attempts = Counter(
            "mfvan_reconnect_attempts",
            "Times a failed source was tried again (successful or not).",
            ["stream"],
            registry=r,
        )
        self.faces = Gauge(
            "mfvan_faces_tracked",
            "Faces in view and tracked in the stream (at most its spot stage's --max-faces).",
            ["stream"],
            registry=r,
        )

    def _recognition(self, r: CollectorRegistry) -> None:
        """What the spotter and the recognizer found and refused."""
        self.spots = Counter(
            "mfvan_spots", "Micro-expression intervals emitted.", ["stream"], registry=r
        )
        self.spots_rejected = Counter(
            "mfvan_spots_rejected",
            "Candidate intervals the spotter refused, by reason.",
            ["stream", "reason"],
            registry=r,
        )
        self.clock_jumps = Counter(
            "mfvan_clock_jumps",
            "Times a stream's media time jumped back, or forward past 5 s (a camera that "
            "restarted, recordings joined); its tracking and spotting started again.",
            ["stream"],
            registry=r,
        )
        self.events = Counter(
            "mfvan_events",
            "Recognition events published, by class.",
            ["stream", "label"],
            registry=r,
        )
        self.unsure = Counter(
            "mfvan_events_unsure",
            "Events not published: their confidence was below --min-confidence.",
            ["stream"],
            registry=r,
        )
        self.vetoed = Counter(
            "mfvan_spots_vetoed",
            "Spots the recognizer refused: its most probable class was 'none' (not a "
            "micro-expression: a blink, a key-frame pulse, a macro-expression's onset...). "
            "Published anyway, labelled 'none', with --publish-vetoed.",
            ["stream", "reason"],
            registry=r,
        )

    def _timing(self, r: CollectorRegistry) -> None:
        """Batches and the times inside and between stages."""
        self.batch_size = Histogram(
            "mfvan_batch_size", "Pairs per inference batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "mfvan_inference_seconds",
            "Time of one inference batch.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "mfvan_stage_seconds",
            "Time a message spent inside a stage.",
            ["stage", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transit = Histogram(
            "mfvan_transit_seconds",
            "Time from the previous stage's send to this stage's receipt.",
            ["stage", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "mfvan_end_to_end_seconds",
            "Time from a frame's capture to the event (or message) leaving this stage.",
            ["stage", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _outputs_and_supervision(self, r: CollectorRegistry) -> None:
        """The outputs' deliveries, queues, restarts."""
        self.outputs_sent = Counter(
            "mfvan_outputs_sent",
            "Events delivered to an output (mqtt, webhook).",
            ["output"],
            registry=r,
        )
        self.outputs_dropped = Counter(
            "mfvan_outputs_dropped",
            "Events an output dropped: disconnected (broker away), queue (full), failed "
            "(retries spent), refused (a 4xx answer).",
            ["output", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "mfvan_queue_depth", "Items waiting inside a stage.", ["stage"], registry=r
        )
        self.restarts = Counter(
            "mfvan_restarts",
            "Stage processes restarted by the supervisor: the stage, and the stream it serves "
            "('all' for the recognizer).",
            ["stage", "stream"],
            registry=r,
        )

    def set_model(self, model: str) -> None:
        """Name the model the stage runs in `mfvan_build_info`."""
        self.build_info.clear()
        self.build_info.labels(_version(), model).set(1)

    def init_stream(self, stream: str, classes=(), rejections=()) -> None:
        """Create a new stream's series at zero, so that dashboards and alerts see 0, not
        "no data", until something happens (Prometheus' advice on missing series):
        `classes` the recognizer's, `rejections` the spotter's reasons to refuse a spot."""
        stage = self.stage
        self.frames_in.labels(stage, stream)
        self.frames_out.labels(stage, stream)
        self.dropped.labels(stage, stream, "hwm")
        if stage in ("spot", "recognize"):  # the latency histograms, per camera
            self.stage_seconds.labels(stage, stream)
            self.transit.labels(stage, stream)
        if stage == "recognize":
            self.end_to_end.labels(stage, stream)
        if stage == "ingest":
            self.reconnects.labels(stream)
            self.reconnect_attempts.labels(stream)
            self.decode_errors.labels(stream)
        elif stage == "spot":
            self.spots.labels(stream)
            self.faces.labels(stream)
            for reason in rejections:
                self.spots_rejected.labels(stream, reason)
        for label in classes:
            self.events.labels(stream, label)
        if classes:
            self.unsure.labels(stream)
        if "none" in classes:
            self.vetoed.labels(stream, "none")

    def forget_stream(self, stream: str) -> None:
        """Remove every series of `stream` (it ended or went idle)."""
        for metric in vars(self).values():
            names = getattr(metric, "_labelnames", ())
            if "stream" not in names:
                continue
            at = names.index("stream")
            for key in list(metric._metrics):  # prometheus_client lists no children publicly
                if key[at] == stream:
                    metric.remove(*key)

    def serve(self, port: int, host: str = "127.0.0.1", registry=None):
        """Serve /metrics (of `registry`, default this stage's), /live and /ready on
        host:port (0: a free port); returns (server, port)."""
        base = MetricsHandler.factory(registry or self.registry)
        ready = self.ready

        class Handler(base):
            def do_GET(self):
                path = urlparse(self.path).path
                if path == "/metrics":
                    return super().do_GET()
                if path == "/live":
                    return self._plain(200, b"live\n")
                if path == "/ready":
                    ok = ready.is_set()
                    return self._plain(200 if ok else 503, b"ready\n" if ok else b"starting\n")
                return self._plain(404, b"not found: try /metrics, /live or /ready\n")

            def log_message(self, format, *args):  # not a line on stderr per request
                log.debug("metrics %s: " + format, self.client_address[0], *args)

            def _plain(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = Server((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, server.server_address[1]
