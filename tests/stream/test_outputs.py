"""Events to MQTT (a real Mosquitto broker, restarted mid-run) and to webhooks (a real
HTTP server that fails on purpose, one that hangs); neither ever holds the events back
from other subscribers."""

import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zmq
from helpers import Broker, Listener, answering, free_port, needs_mosquitto, scrape, until
from test_store import event

from mfvan.stream import subscribe
from mfvan.stream.outputs import Counters
from mfvan.stream.outputs.mqtt import MqttConfig, MqttOutput
from mfvan.stream.outputs.webhook import WebhookOutput, signature


@needs_mosquitto
def test_mqtt_events_survive_a_broker_restart_and_drops_are_counted(tmp_path):
    broker = Broker(tmp_path, free_port())
    broker.start()
    drops = []
    config = MqttConfig("127.0.0.1", broker.port, qos=1, min_delay_s=1, max_delay_s=1)
    out = MqttOutput(config, Counters(on_drop=drops.append))
    listener = Listener(broker.port)
    try:
        assert out.connected.wait(10) and listener.subscribed.wait(10)
        sent = [event("door", i) for i in range(3)]
        assert all(out.send(e) for e in sent)
        assert until(lambda: len(listener.events()) == 3)
        got = listener.events()
        assert [e["id"] for e in got] == [e.id for e in sent] and got[0]["type"] == "new"
        assert got[0]["label"] == "surprise" and "crops" not in got[0]
        assert len(listener.events("mfvan/door/events")) == 3, "the camera's own topic"
        assert b"online" in [p for t, p, _ in listener.messages if t == "mfvan/available"]

        broker.stop()  # the broker goes away: events are dropped and counted, not queued
        assert until(lambda: not out.connected.is_set())
        assert not out.send(event("door", 3)) and not out.send(event("door", 4))
        assert out.dropped == 2 and drops == ["disconnected", "disconnected"]

        broker.start()  # ... and comes back: events flow again
        assert out.connected.wait(15) and listener.subscribed.wait(15)
        after = [event("door", 5 + i) for i in range(2)]
        assert all(out.send(e) for e in after)
        assert until(lambda: len(listener.events()) == 5)
        assert [e["seq"] for e in listener.events()] == [0, 1, 2, 5, 6]
        assert out.sent == 5
    finally:
        out.close()
        listener.close()
        broker.stop()


class Hook(BaseHTTPRequestHandler):
    """Answers with the next status of the server's `script` (then 200); records bodies."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        status = server.script.pop(0) if server.script else 200
        server.seen.append((status, body, dict(self.headers)))
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # where a followed redirect would land, as urllib re-sends it
        self.server.seen.append(("GET", b"", dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _hook_server(script):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.script, server.seen = list(script), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def test_a_webhook_that_fails_is_retried_and_its_posts_are_signed():
    server, url = _hook_server([500, 503])
    out = WebhookOutput([url], secret=b"s3cret", first_delay_s=0.05)
    try:
        e = event("door", 0)
        assert out.send(e)
        assert until(lambda: out.sent == 1)
        assert [status for status, _, _ in server.seen] == [500, 503, 200]
        _, body, headers = server.seen[-1]
        assert json.loads(body)["id"] == e.id == headers["X-Mfvan-Event"]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Mfvan-Signature-256"] == expected == signature(b"s3cret", body)
        assert out.dropped == 0
    finally:
        out.close()
        server.shutdown()


def test_a_webhook_that_refuses_or_keeps_failing_drops_and_counts():
    refusing, url1 = _hook_server([400])
    failing, url2 = _hook_server([500] * 10)
    drops = []
    out = WebhookOutput(
        [url1, url2], first_delay_s=0.02, retries=2, counters=Counters(on_drop=drops.append)
    )
    try:
        out.send(event("door", 0))
        assert until(lambda: len(drops) == 2)
        assert sorted(drops) == ["failed", "refused"]
        assert len(refusing.seen) == 1, "a 4xx is not retried"
        assert len(failing.seen) == 3, "a 5xx is, `retries` times"
    finally:
        out.close()
        refusing.shutdown()
        failing.shutdown()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_webhook_that_answers_a_redirect_is_not_followed_and_counts_as_failed(status, caplog):
    """A 3xx is not followed (urllib re-sent a 302'd POST as a GET without its body and
    counted it sent), and the URL's path and query (often a secret token) are in no log
    line."""
    server, url = _hook_server([status])
    url += "?token=T0PS3CRET"
    drops = []
    out = WebhookOutput([url], first_delay_s=0.02, counters=Counters(on_drop=drops.append))
    try:
        with caplog.at_level(logging.INFO, "mfvan.outputs"):
            out.send(event("door", 0))
            assert until(lambda: drops == ["failed"])
        assert out.sent == 0 and [s for s, _, _ in server.seen] == [status], server.seen
        assert "redirect" in caplog.text and "T0PS3CRET" not in caplog.text
        assert "/hook" not in caplog.text, "the path is not shown either"
    finally:
        out.close()
        server.shutdown()


def test_a_webhook_that_answers_garbage_is_retried_and_its_worker_lives_on():
    """Before: an answer that is not HTTP (http.client.BadStatusLine, not an OSError)
    escaped the worker's loop and killed its thread: every later event waited forever."""
    with answering(b"not http at all\r\n\r\n") as (port, answered):
        url = f"http://127.0.0.1:{port}/hook"
        drops = []
        out = WebhookOutput(
            [url], first_delay_s=0.02, retries=1, counters=Counters(on_drop=drops.append)
        )
        try:
            out.send(event("door", 0))
            assert until(lambda: len(drops) == 1)
            out.send(event("door", 1))
            assert until(lambda: len(drops) == 2), "the worker died on the first garbage answer"
            assert drops == ["failed", "failed"] and len(answered) == 4
        finally:
            out.close()


@pytest.mark.slow
def test_a_hung_webhook_never_holds_events_back_from_subscribers(tmp_path):
    """A webhook endpoint that accepts connections and never answers: `mfvan forward`
    waits on it in its own threads; a plain subscriber of the same recognizer gets every
    event as it is published."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(100)  # accepted by the kernel, never answered
    endpoint = f"ipc://{tmp_path}/events.ipc"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    port = free_port()
    forward = subprocess.Popen(
        [sys.executable, "-m", "mfvan", "forward", endpoint, "--metrics-port", str(port)]
        + ["--webhook", f"http://127.0.0.1:{hung.getsockname()[1]}/hook"],
        stderr=subprocess.DEVNULL,
    )
    lags, received = [], []
    try:
        with subscribe(endpoint, timeout_s=3.0) as sub:
            stop = threading.Event()

            def read():
                for e in sub:
                    lags.append(time.time_ns() - e.times["t_recognize"])
                    received.append(e.seq)
                    if stop.is_set():
                        break

            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(1.5)  # both subscriptions up
            for seq in range(300):  # 100 events a second for 3 s
                e = event("door", seq)
                e.onset_crop = e.apex_crop = None
                e.t_recognize = time.time_ns()
                e.send(pub)
                time.sleep(0.01)
            stop.set()
            reader.join(timeout=10)
        assert received == list(range(300)), "every event reached the plain subscriber"
        assert max(lags) < 1e9, "none waited for the hung webhook (its timeout is 5 s)"
        hung.settimeout(5)
        hung.accept()[0].close()  # the forwarder was trying to deliver to it meanwhile
        assert forward.poll() is None, "and it is still running"
        assert scrape(port, "mfvan_outputs_sent_total") == 0, "nothing got through"
    finally:
        forward.terminate()
        forward.wait(timeout=15)
        pub.close(linger=0)
        hung.close()


FAKE_OUTPUT = '''
"""An output that appends each event's id to a file: a whole output in one module."""
from mfvan.stream.outputs import OutputKind


class FileOutput:
    name = "jsonfile"

    def __init__(self, path, counters):
        self.path, self.counters = path, counters

    def send(self, event):
        with open(self.path, "a") as f:
            f.write(event.id + "\\n")
        self.counters.on_sent()
        return True

    def close(self):
        pass


def add_options(p):
    p.add_argument("--jsonfile", metavar="FILE", help="append each event's id here")


KIND = OutputKind(
    "jsonfile", add_options, lambda args: bool(args.jsonfile),
    lambda args, counters: FileOutput(args.jsonfile, counters),
)
'''


def test_a_new_output_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    """Registering an output (its module, one entry in REGISTRY) is all it takes: `mfvan
    forward` offers its flag and builds it, `mfvan run` passes the flag to its forward
    child unchanged, without either naming it."""
    from pathlib import Path

    from mfvan.deploy.cli import build_parser
    from mfvan.deploy.commands.forward import outputs
    from mfvan.deploy.runtime.supervisor import plan
    from mfvan.stream import outputs as registry
    from mfvan.stream.metrics import Metrics

    (tmp_path / "fake_output.py").write_text(FAKE_OUTPUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "jsonfile", "fake_output")
    ids = tmp_path / "ids.txt"
    args = build_parser().parse_args(["forward", "ipc:///x", "--jsonfile", str(ids)])
    m = Metrics("forward")
    (target,) = outputs(args, m)
    e = event("door", 0)
    assert target.send(e) and ids.read_text() == e.id + "\n"
    assert m.outputs_sent.labels("jsonfile")._value.get() == 1, "counted under its name"
    run = build_parser().parse_args(
        ["run", "--source", "a=x.mp4", "--jsonfile", str(ids), "--webhook", "http://h/1"]
        + ["--webhook", "http://h/2"]
    )
    children, _ = plan(run, Path("/run/x"))
    (forward,) = [c for c in children if c.stage == "forward"]
    assert not any("http://h/" in a for c in children for a in c.argv), "secrets not in argv"
    again = build_parser().parse_args(forward.argv)
    registry.secrets_from_env(again, forward.env)  # the webhook URLs go by the environment
    assert again.jsonfile == str(ids) and again.webhook == ["http://h/1", "http://h/2"]
    built = outputs(again)
    assert [t.name for t in built] == ["webhook", "jsonfile"]
    for t in built:
        t.close()


def test_an_unreachable_mqtt_broker_is_said_once(caplog):
    """No broker listens where --mqtt points: one warning says so (before: nothing was
    ever logged, and every event was dropped as `disconnected` in silence)."""
    port = free_port()  # nothing listens there
    with caplog.at_level(logging.WARNING, "mfvan.outputs"):
        out = MqttOutput(MqttConfig("127.0.0.1", port, min_delay_s=1, max_delay_s=1))
        try:
            assert until(lambda: "cannot reach" in caplog.text, 15), caplog.text
            time.sleep(2.5)  # further failed attempts are not said again
            assert caplog.text.count("cannot reach") == 1
            assert not out.send(event("door", 0)) and out.dropped == 1
        finally:
            out.close()


def test_a_webhook_that_trickles_its_answer_is_cut_off_and_counted(caplog):
    """An endpoint that answers one byte every 0.3 s never trips a per-read timeout; the
    whole exchange is cut off at 3x the timeout, retried, then counted failed and said
    (before: the worker was held forever, with no log line nor metric)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                    if stop.wait(0.3):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    threading.Thread(target=trickle, daemon=True).start()
    drops = []
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    out = WebhookOutput(
        [url], timeout_s=0.5, retries=1, first_delay_s=0.05, counters=Counters(drops.append)
    )
    try:
        with caplog.at_level(logging.INFO, "mfvan.outputs"):
            started = time.monotonic()
            out.send(event("door", 0))
            assert until(lambda: drops == ["failed"], 20), drops
            assert time.monotonic() - started < 10
        assert "no whole answer within 1.5 s" in caplog.text and out.sent == 0
    finally:
        out.close()
        stop.set()
        server.close()
