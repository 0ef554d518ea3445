"""Faults, bad input and hostile peers (issue 15): each test is named after a finding, and
says what happened before. Stages run in threads over real ZeroMQ sockets, or as real
processes where the finding was about a process (hanging, exit status, signals)."""

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers import MOSQUITTO, Broker, Listener, free_port, port_open, scrape, until

from mfvan.deploy.runtime.supervisor import RuntimeDir, plan
from mfvan.stream import protocol
from mfvan.stream.messages import uuid7
from mfvan.stream.metrics import Metrics
from mfvan.stream.sockets import Streams
from mfvan.stream.stages import SpotStage

MFVAN = [sys.executable, "-m", "mfvan.deploy.cli"]


def mfvan(*argv, env=None, timeout=60):
    """`mfvan ARGV...` to its end: (exit status, stderr)."""
    run = subprocess.run(
        [*MFVAN, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return run.returncode, run.stderr


def one_line(stderr: str) -> bool:
    lines = [line for line in stderr.strip().splitlines() if "mfvan " in line]
    return "Traceback" not in stderr and len(lines) == 1


# ----------------------------------------------------------------- start or fail, loudly


@pytest.mark.slow  # a process each: in make test, not make test-fast
def test_a_stage_whose_port_is_taken_fails_in_one_line_instead_of_hanging(tmp_path):
    """Before: sockets bound before the guarded path, and `Context.term()` hung on them
    forever while /metrics answered."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        code, err = mfvan(
            "ingest",
            "--source",
            "synth://?fps=25&seconds=5",
            "--out",
            f"tcp://127.0.0.1:{port}",
            "--metrics-port",
            "-1",
            timeout=60,
        )
        assert code == 2 and "in use" in err and one_line(err), err
        # the metrics port taken: the same
        code, err = mfvan(
            "ingest",
            "--source",
            "synth://?fps=25&seconds=5",
            "--out",
            f"ipc://{tmp_path}/f.ipc",
            "--metrics-port",
            str(port),
        )
        assert code == 2 and "cannot serve metrics" in err and one_line(err), err
    finally:
        taken.close()


def test_an_ipv6_endpoint_binds(tmp_path):
    """Before: `--out tcp://[::1]:PORT` hung (IPv6 never enabled on the socket)."""
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 is not configured here")
    from mfvan.stream.security import bind, connect

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        bind(push, "tcp://[::1]:*")
        connect(pull, push.getsockopt(zmq.LAST_ENDPOINT).decode())
        protocol.send(push, "eos", "cam1", 0, wait_ms=2000)
        assert pull.poll(5000) and protocol.recv(pull).kind == "eos"
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


@pytest.mark.slow  # a process each: in make test, not make test-fast
@pytest.mark.parametrize(
    "argv, words",
    [
        (["recognize", "--in", "ipc:///x", "--out", "ipc:///y", "--max-batch", "0"], "above 0"),
        (
            ["recognize", "--in", "ipc:///x", "--out", "ipc:///y", "--keys", "/nonexistent"],
            "/nonexistent",
        ),
        (
            [
                "spot",
                "--in",
                "tcp://127.0.0.1:1",
                "--out",
                "tcp://127.0.0.1:2",
                "--keys",
                "/nonexistent",
            ],
            "/nonexistent",
        ),
        (["run", "--source", "synth://?fps=abc"], "bad synth:// URL"),
        (["run", "--source", "synth://?fps=0"], "fps must be"),
        (["run", "--source", "/nonexistent/clip.mp4"], "no such file"),
        (["run", "--source", "/"], "is a folder"),
        (["run", "--source", "rtsp:///nohost"], "needs a host"),
        (["run", "--source", "env:MFVAN_NO_SUCH_VARIABLE"], "is not set"),
        (["ingest", "--source", "env:MFVAN_NO_SUCH_VARIABLE", "--out", "ipc:///x"], "is not set"),
        (["run", "--source", "synth://", "--metrics-base-port", "70000"], "70000"),
        (["run", "--source", "synth://", "--metrics-base-port", "0"], "--metrics-base-port 0"),
        (["run", "--source", "synth://", "--metrics-base-port", "1"], "--metrics-base-port 1"),
        (["subscribe", "notanendpoint", "--timeout", "1"], "cannot connect to 'notanendpoint'"),
        (["subscribe", "tcp://127.0.0.1:1", "--keys", "/nonexistent"], "/nonexistent"),
        (["keys", "AFILE"], "is not a folder"),
        (["run", "--source", "a=synth://", "--source", "a=synth://?seed=2"], "a given more"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, words, tmp_path):
    """Before: each of these ended in a traceback (or hung)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [str(afile) if a == "AFILE" else a for a in argv]
    code, err = mfvan(*argv)
    assert code == 2, err
    assert words in err and "Traceback" not in err, err


@pytest.mark.parametrize("where", ["ipc", "tcp"])
def test_a_subscriber_to_nothing_warns_and_its_timeout_exits_1(where, tmp_path):
    endpoint = (
        f"ipc://{tmp_path}/no-such.ipc" if where == "ipc" else f"tcp://127.0.0.1:{free_port()}"
    )
    code, err = mfvan("subscribe", endpoint, "--timeout", "0.5", "--stream", "cam1")
    assert code == 1, err
    said = "does not exist" if where == "ipc" else "nothing listens at"
    assert f"warning: {endpoint} {said}" in err or f"warning: {said} {endpoint}" in err, err
    assert "no events of stream cam1 in 0.5 s" in err and "Traceback" not in err


@pytest.mark.slow  # a process each: in make test, not make test-fast
@pytest.mark.parametrize(
    "env, words",
    [
        ({"MFVAN_LOG": "verbose"}, "MFVAN_LOG='verbose' is not a log level"),
        ({"MFVAN_METRICS_HOST": "no.such.host.invalid"}, "cannot serve metrics"),
    ],
)
def test_a_bad_environment_is_one_line_and_exit_2(env, words, tmp_path):
    code, err = mfvan(
        "ingest",
        "--source",
        "synth://?fps=25&seconds=1",
        "--out",
        f"ipc://{tmp_path}/f.ipc",
        "--metrics-port",
        "0",
        env=env,
    )
    assert code == 2 and words in err and "Traceback" not in err, err


@pytest.mark.slow  # a process each: in make test, not make test-fast
def test_a_second_run_on_the_default_ports_is_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1] + 1  # the run's own port (base - 1) is taken
    try:
        code, err = mfvan(
            "run", "--source", "synth://?seconds=1", "--metrics-base-port", str(base),
            "--runtime-dir", str(tmp_path / "rt"),
        )  # fmt: skip
    finally:
        taken.close()
    assert code == 2 and "cannot serve metrics" in err and one_line(err), err


def test_a_busy_ipc_endpoint_is_refused_not_stolen(tmp_path):
    """Before: two runs given the same events endpoint: the second took the socket file
    over silently and the first published to nobody."""
    from mfvan.stream.security import EndpointInUse, bind

    ctx = zmq.Context()
    first, second = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/events.ipc"
    try:
        bind(first, endpoint)
        with pytest.raises(EndpointInUse, match="in use by another process"):
            bind(second, endpoint)
        first.close(0)
        time.sleep(0.5)  # ZeroMQ closes the listener in its own thread
        bind(second, endpoint)  # nobody listening any more: bound
    finally:
        first.close(0)
        second.close(0)
        ctx.term()


def test_ready_and_live_are_separate_from_metrics_and_other_paths_are_404():
    """Before: /metrics answered every path, so /healthz "passed" during the 45 s compile."""
    import urllib.error
    import urllib.request

    m = Metrics("spot")
    server, port = m.serve(0)
    try:

        def status(path):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").status
            except urllib.error.HTTPError as e:
                return e.code

        assert [status(p) for p in ("/live", "/ready", "/metrics", "/healthz")] == [
            200, 503, 200, 404,
        ]  # fmt: skip
        assert m.registry.get_sample_value("mfvan_ready", {"stage": "spot"}) == 0
        m.ready.set()
        assert status("/ready") == 200
        assert m.registry.get_sample_value("mfvan_ready", {"stage": "spot"}) == 1
    finally:
        server.shutdown()


# ----------------------------------------------------------------- no message kills a stage


def _frame_message(stream: str, shape=(120, 160), seq=0, **fields):
    return protocol.decode(
        protocol.encode("frame", stream, seq, [np.zeros(shape, np.uint8)], t_capture=1, **fields)
    )


def test_memory_by_stream_id_is_bounded_and_idle_streams_are_forgotten():
    """Before: 5,000 tiny frames, each of a new stream id, took the spot stage from 361 MB
    to 10.7 GB and /metrics to 6.7 MB; eos freed nothing."""
    from prometheus_client import generate_latest

    m = Metrics("spot")
    stage = SpotStage(m, max_streams=8, idle_s=5.0)
    for i in range(5000):
        stage.handle(_frame_message(f"cam{i}", (32, 32)), now=0.0)
    assert len(stage.streams) == 8
    assert m.dropped.labels("spot", "", "streams")._value.get() == 5000 - 8
    assert len(generate_latest(m.registry)) < 60_000, "series of 8 streams, not 5,000"
    # eos frees a stream's tracker at once; its series go once it is idle
    stage.handle(protocol.decode(protocol.encode("eos", "cam0", 1)), now=1.0)
    assert "cam0" not in stage.tracks and "cam0" in stage.streams.seen
    stage.handle(_frame_message("late", (32, 32)), now=10.0)  # the idle ones make room
    assert set(stage.streams.seen) == {"late"}
    assert b'stream="cam1"' not in generate_latest(m.registry)


def test_streams_cap_and_expiry_are_exact():
    forgotten = []
    streams = Streams(lambda s: object(), forgotten.append, most=2, idle_s=10.0)
    assert streams.get("a", 0.0) is not None and streams.get("b", 5.0) is not None
    assert streams.get("c", 6.0) is None, "a third stream is refused while both are live"
    assert streams.get("c", 10.5) is not None and forgotten == ["a"], "a was idle 10.5 s"
    with pytest.raises(ValueError):
        Streams(lambda s: 0, print, most=0)


def _mutations(rng, good: list[bytes], n: int):
    """Random and mutated messages: random bytes, truncated or bit-flipped parts of a
    good message, headers with typed fields and shapes a stage cannot take, and
    pass-through fields that JSON cannot say."""
    import msgpack

    header = msgpack.unpackb(good[1])
    bad_values = [None, "abc", -1, 1.5, True, [], {}, "x" * 300, 2**63, float("nan")]
    # what JSON cannot say, in a pass-through field (one the kind does not declare, or
    # the source's ground truth): every consumer writes JSON
    opaque = [b"raw", msgpack.ExtType(7, b"x"), [[[[[[[[[[1]]]]]]]]]], float("inf"), {"k": b""}]
    for i in range(n):
        kind = i % 7
        if kind == 6:
            h = dict(header)
            value = opaque[int(rng.integers(0, len(opaque)))]
            h["truth" if i % 2 else "note"] = {"v": value} if i % 2 else value
            yield [good[0], msgpack.packb(h), *good[2:]]
            continue
        if kind == 0:
            yield [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
        elif kind == 1:
            yield [good[0], good[1][: int(rng.integers(0, len(good[1])))], *good[2:]]
        elif kind == 2:
            raw = bytearray(good[1])
            raw[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
            yield [good[0], bytes(raw), *good[2:]]
        elif kind == 3:  # a typed field of the wrong type
            h = dict(header)
            key = list(h)[int(rng.integers(0, len(h)))]
            h[key] = bad_values[int(rng.integers(0, len(bad_values)))]
            yield [good[0], msgpack.packb(h), *good[2:]]
        elif kind == 4:  # a shape or dtype the stage cannot take, with a matching buffer
            shape = [[0, 0], [1024], [8, 8, 3, 2], [32, 32, 4], [64, 48], [16, 16]][i % 6]
            dtype = ["uint8", "float64", "uint16"][i % 3]
            h = dict(header)
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            h["buffers"] = [{"shape": shape, "dtype": dtype, "format": ""}] * len(good[2:])
            yield [good[0], msgpack.packb(h), *([b"\0" * nbytes] * len(good[2:]))]
        else:  # crops of mixed sizes in one pair, or a kind another stage expects
            h = dict(header, kind=["frame", "pair", "event", "eos"][i % 4])
            yield [good[0], msgpack.packb(h), *good[2:]]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["spot", "recognize", "subscriber"])
def test_fuzz_10000_messages_while_a_real_stream_runs_beside_them(stage, tmp_path, demo_weights):
    """10,000 random and mutated messages (typed-field and shape cases included) to a
    stage, and a real stream's good messages beside them: the stage survives, every bad
    message is dropped and counted, and every good one is handled. Before: 7 of 32 typed
    cases crashed the spot stage, 9 of 30 the recognizer, and the subscriber crashed."""
    from mfvan.deploy.inference.backends import TorchBackend
    from mfvan.stream import subscribe
    from mfvan.stream.recognizer import Classifier, RecognizeConfig, run_recognize
    from mfvan.stream.stages import SpotConfig, run_spot

    rng = np.random.default_rng(15)
    ctx = zmq.Context.instance()
    stop = threading.Event()
    m = Metrics("recognize" if stage != "spot" else "spot")
    crop = np.full((128, 128), 90, np.uint8)
    pair_fields = dict(onset=1, apex=2, offset=3, t_capture=time.time_ns())
    inp, out = f"ipc://{tmp_path}/in.ipc", f"ipc://{tmp_path}/out.ipc"
    if stage == "spot":
        good = protocol.encode("frame", "cam1", 0, [np.full((120, 160), 90, np.uint8)], t_capture=1)
        target, args = run_spot, (SpotConfig([inp], out), m, stop)
    else:
        model, meta = demo_weights
        good = protocol.encode("pair", "cam1", 0, [crop, crop], **pair_fields)
        classifier = Classifier(TorchBackend(model), meta["classes"], "demo")
        target, args = run_recognize, (RecognizeConfig([inp], out), classifier, m, stop)
    good = [bytes(f) for f in good]
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 100_000)
    push.bind(inp)
    thread = threading.Thread(target=target, args=args)
    thread.start()
    bad = list(_mutations(rng, good, 10_000))
    sub = None
    try:
        if stage == "subscriber":  # the mutations are events, published beside good ones
            pub = ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, 100_000)
            pub.bind(f"ipc://{tmp_path}/events.ipc")
            sub = subscribe(f"ipc://{tmp_path}/events.ipc", timeout_s=3.0)
            event = dict(pair_fields, label="positive", probs=[0.1, 0.8, 0.1], confidence=0.8,
                         classes=list(meta["classes"]), model="demo")  # fmt: skip
            good_event = [bytes(f) for f in protocol.encode("event", "cam1", 0, **event)]
            bad = list(_mutations(rng, good_event, 10_000))
            time.sleep(0.3)  # the subscription reaches the publisher
            for i, frames in enumerate(bad):
                pub.send_multipart(frames)
                if i % 100 == 0:
                    protocol.send(pub, "event", "cam1", i // 100, marked=True, **event)
            received = list(sub)  # (a mutation may still be a legal event: delivered)
            pub.close(0)
            assert sum(e.fields.get("marked", False) for e in received) == 100, "every good one"
            assert sub.dropped >= 5_000, "the bad ones skipped and counted"
            return
        for i, frames in enumerate(bad):
            push.send_multipart(frames)
            if i % 100 == 0:
                push.send_multipart(good)
        reasons = ("malformed", "version", "schema", "unexpected", "error")

        def counts():
            dropped = sum(m.dropped.labels(m.stage, "", r)._value.get() for r in reasons)
            return dropped, m.frames_in.labels(m.stage, "cam1")._value.get()

        deadline = time.monotonic() + 180
        while thread.is_alive() and time.monotonic() < deadline and sum(counts()) < 10_100:
            time.sleep(0.2)
        assert thread.is_alive(), "the stage is still running"
        dropped, handled = counts()
        # a mutation may still be a legal message (a flipped bit in a timestamp): handled
        assert handled >= 100 and dropped + handled == 10_100, (dropped, handled)
        assert m.dropped.labels(m.stage, "", "error")._value.get() == 0, "no message crashed it"
    finally:
        stop.set()
        thread.join(timeout=30)
        push.close(0)
        if sub is not None:
            sub.close()


def test_one_bad_pair_never_takes_its_batch_down(demo_weights):
    """Before: `_infer` stacked the whole batch; crops of mixed sizes (or a backend that
    failed on one pair) lost every pair of the batch, of every stream."""
    from mfvan.deploy.inference.backends import TorchBackend
    from mfvan.stream.messages import Pair
    from mfvan.stream.recognizer import Classifier, RecognizeConfig, RecognizeStage

    model, meta = demo_weights
    torch_backend = TorchBackend(model)

    class Picky:  # fails on any batch holding a crop of all 13s
        name = "picky"

        def __call__(self, onset, apex, flow=None):
            if (onset == 13).all(axis=(1, 2)).any():
                raise RuntimeError("cannot")
            return torch_backend(onset, apex, flow)

    def pair(stream, value, size):
        crop = np.full((size, size), value, np.uint8)
        return Pair(stream=stream, onset_crop=crop, apex_crop=crop, onset=1, apex=2, offset=3), 0

    batch = [pair("a", 90, 128), pair("b", 13, 128), pair("c", 90, 64), pair("d", 90, 128)]
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)
    m = Metrics("recognize")
    stage = RecognizeStage(Classifier(Picky(), meta["classes"], "demo"), m, RecognizeConfig([], ""))
    stage.publish = lambda event: event.send(pub)
    try:
        stage.infer(batch)
        got = []
        while sub.poll(1000):
            got.append(protocol.recv(sub).stream)
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert sorted(got) == ["a", "c", "d"], "every pair but the bad one"
    assert m.dropped.labels("recognize", "", "error")._value.get() == 1


def test_a_part_larger_than_the_largest_frame_never_reaches_the_stage(tmp_path):
    """Before: a single 8000 x 8000 frame (64 MB) was accepted (ZMQ_MAXMSGSIZE unset)."""
    from mfvan.stream.stages import SpotConfig, run_spot

    ctx = zmq.Context.instance()
    m, stop = Metrics("spot"), threading.Event()
    inp = f"ipc://{tmp_path}/in.ipc"
    big, small = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    big.bind(inp)
    config = SpotConfig([inp], f"ipc://{tmp_path}/o.ipc")
    thread = threading.Thread(target=run_spot, args=(config, m, stop))
    thread.start()
    try:
        huge = np.zeros((8000, 8000), np.uint8)
        big.send_multipart([b"cam1", protocol.encode("eos", "cam1", 0)[1], huge])
        try:  # after it, on the same pipe, if ZeroMQ has not dropped the sender yet (it does
            # not redial after such a protocol error: a blocking send could wait forever)
            big.send_multipart(protocol.encode("eos", "cam1", 1), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(2.0)
        assert thread.is_alive()
        assert m.dropped.labels("spot", "", "malformed")._value.get() == 0, "never decoded"
    finally:
        stop.set()
        thread.join(timeout=10)
        big.close(0)
        small.close(0)


def test_malformed_messages_are_logged_at_a_limited_rate(caplog):
    from mfvan.stream.sockets import decode

    m = Metrics("spot")
    with caplog.at_level(logging.WARNING, logger="mfvan.stream"):
        for _ in range(1000):
            decode([b"x", b"garbage"], "spot", m)
    assert m.dropped.labels("spot", "", "malformed")._value.get() == 1000
    assert len([r for r in caplog.records if "dropped a message" in r.message]) <= 1


def test_a_stream_without_a_face_says_so_once(caplog):
    m = Metrics("spot")
    stage = SpotStage(m)
    blank = np.full((120, 160), 128, np.uint8)
    with caplog.at_level(logging.WARNING, logger="mfvan.stream"):
        for i in range(SpotStage.NO_FACE_FRAMES + 10):
            stage.handle(
                protocol.decode(protocol.encode("frame", "cam1", i, [blank], t_media=i * 10**7)),
                now=0.0,
            )
    assert len([r for r in caplog.records if "no face in the last" in r.message]) == 1


# ----------------------------------------------------------------- stoppable always


@pytest.mark.slow  # a process each: in make test, not make test-fast
class _Stderr:
    """A child's standard error, read as it comes (a thread), so a test waits for what the
    child says it is doing instead of sleeping a guessed time: on a busy box the imports
    alone took over 4 s, and a test that slept 4 s signalled a child still importing."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float = 120.0) -> bool:
        return until(lambda: any(text in line for line in self.lines), timeout_s)

    def text(self) -> str:
        self.thread.join(timeout=10)
        return "".join(self.lines)


def test_ingest_stops_on_sigterm_within_2_s_while_its_camera_is_down(tmp_path):
    """Before: `Reconnecting` never checked `stop`; a standalone ingest needed SIGKILL
    after 14 minutes. Two dead cameras: one refusing connections, one that accepts and
    never answers (the open blocks in FFmpeg for its whole timeout). The signal goes once
    the child is retrying (it said so) or blocked in the open (it connected): the 2 s are
    the stop's, not the imports'."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent.settimeout(120)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    try:
        for port in (dead, silent.getsockname()[1]):
            proc = subprocess.Popen(
                [*MFVAN, "ingest", "--source", f"rtsp://127.0.0.1:{port}/cam",
                 "--out", f"ipc://{tmp_path}/f{port}.ipc", "--metrics-port", "-1"],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            stderr = _Stderr(proc)
            if port == dead:  # refused at once: retried, each time with its reason
                assert stderr.wait_for("Connection refused; trying again"), stderr.lines
            else:
                connection, _ = silent.accept()  # it is in the open, which never ends
                connection.close()
            time.sleep(0.5)  # inside the retry wait, or the open
            assert proc.poll() is None, "a camera that is down is retried, not fatal"
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            took = time.monotonic() - sent
            err = stderr.text()
            assert took < 2.0, f"stopped {took:.1f} s after SIGTERM"
            assert "None" not in err and "Traceback" not in err
    finally:
        silent.close()


# ----------------------------------------------------------------- sources, credentials


@pytest.mark.slow  # a process each: in make test, not make test-fast
def test_passwords_never_reach_argv_or_logs(tmp_path):
    """Before: RTSP passwords appeared in the logs on every reconnect and in `ps`."""
    from mfvan.deploy.cli import build_parser
    from mfvan.stream.ingest import redact

    url = "rtsp://admin:hunter2@127.0.0.1:1/Streaming/Channels/101"
    assert redact(url) == "rtsp://admin:***@127.0.0.1:1/Streaming/Channels/101"
    args = build_parser().parse_args(["run", "--source", url])
    children, _ = plan(args, tmp_path)
    assert not any("hunter2" in a for c in children for a in c.argv), "not in any argv"
    assert children[0].env == {"MFVAN_SOURCE": url}, "handed over by the environment"
    proc = subprocess.Popen(
        [*MFVAN, "ingest", "--source", "env:CAM", "--out", f"ipc://{tmp_path}/f.ipc",
         "--metrics-port", "-1"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "CAM": url},
    )  # fmt: skip
    stderr = _Stderr(proc)
    assert stderr.wait_for("trying again"), stderr.lines  # not a guessed 4 s: its own word
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    err = stderr.text()
    assert "trying again" in err and "***" in err and "hunter2" not in err, err


def test_a_truncated_file_warns(tmp_path, caplog):
    import av

    from mfvan.stream.ingest import PyAVSource

    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(100):
            image = np.full((120, 160, 3), i * 2, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    whole = len(list(PyAVSource(str(path))))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="mfvan.ingest"):
        frames = list(PyAVSource(str(path)))
    assert 0 < len(frames) < whole
    assert any("looks truncated" in r.message for r in caplog.records)


# ----------------------------------------------------------------- runtime folder


def test_the_runtime_folder_is_private_locked_and_removed(tmp_path):
    """Before: two runs sharing --runtime-dir stole each other's sockets; a folder made by
    another user was accepted (that user could feed forged events); mkdtemp folders were
    never removed."""
    from mfvan.deploy.runtime.stage import Fatal

    path = tmp_path / "rt"
    with RuntimeDir(path) as runtime:
        assert (runtime.stat().st_mode & 0o777) == 0o700
        (runtime / "events.ipc").touch()
        with pytest.raises(Fatal, match="in use by another mfvan run"):
            with RuntimeDir(path):
                pass
    assert not path.exists(), "made by the run: removed with its sockets"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(Fatal, match="writable by others"):
        RuntimeDir(shared)
    if os.getuid() == 0:  # root can give a folder away: another user's folder is refused
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(Fatal, match="belongs to another user"):
            RuntimeDir(theirs)
    with RuntimeDir() as made:  # the default: a new private folder, removed after
        assert made.exists()
    assert not made.exists()


def test_shutdown_stops_sources_first():
    """Before: `shutdown()` signalled every stage at once although it said sources go
    first."""
    from mfvan.deploy.runtime.supervisor import Child, shutdown

    order = []

    class Proc:
        def __init__(self, name):
            self.name, self.alive = name, True

        def poll(self):
            return None if self.alive else 0

        def send_signal(self, sig):
            order.append(self.name)
            self.alive = False

        def wait(self, timeout=None):
            return 0

    children = []
    for stage, stream in [("recognize", "all"), ("spot", "a"), ("ingest", "a"), ("ingest", "b")]:
        child = Child(stage, stream, [])
        child.proc = Proc(child.name)
        children.append(child)
    shutdown(children)
    assert order == ["ingest-a", "ingest-b", "spot-a", "recognize"]


@pytest.mark.slow
def test_a_supervisor_killed_with_9_takes_its_stages_with_it(tmp_path):
    """Before: kill -9 of the supervisor orphaned its children."""
    runtime = tmp_path / "rt"
    base = 20300 + os.getpid() % 500
    proc = subprocess.Popen(
        [*MFVAN, "run", "--source", "synth://?fps=25&seconds=120", "--backend", "torch",
         "--runtime-dir", str(runtime), "--metrics-base-port", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def children():
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    try:
        deadline = time.monotonic() + 120
        while len(children()) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = children()
        assert len(pids) == 3, "ingest, spot and the recognizer"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
            for p in pids:  # reap them if they were ours (they are not: init's)
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and _running(p)]
        assert not alive, f"stages left running: {alive}"
    finally:
        proc.kill()
        for p in children():
            os.kill(p, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_run_with_one_bad_file_plays_the_good_one_and_ends(tmp_path):
    """Before: a source that can never work was restarted forever (exit 2 treated as a
    crash); a run with one good and one bad file never ended."""
    import av

    good = tmp_path / "good.mp4"
    with av.open(str(good), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i, np.uint8), "rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    base = 21300 + os.getpid() % 500
    run = subprocess.run(
        [*MFVAN, "run", "--source", str(good), "--source", str(bad), "--backend", "torch",
         "--runtime-dir", str(tmp_path / "rt"), "--metrics-base-port", str(base)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "failed: bad.mp4" in run.stderr and "restarting" not in run.stderr
    assert "cannot open" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "rt").exists(), "its runtime folder removed"


@pytest.mark.slow
def test_a_run_whose_recognizer_cannot_bind_stops_with_its_reason(tmp_path):
    """Before: `--events tcp://127.0.0.1:9100` (the supervisor's own metrics port) hung
    the recognizer, and `mfvan run` reported it running and exited 0."""
    base = 22300 + os.getpid() % 500
    run = subprocess.run(
        [*MFVAN, "run", "--source", "synth://?fps=25&seconds=30", "--backend", "torch",
         "--events", f"tcp://127.0.0.1:{base - 1}", "--metrics-base-port", str(base),
         "--runtime-dir", str(tmp_path / "rt")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "in use" in run.stderr and "did not come up" in run.stderr
    assert "Traceback" not in run.stderr


# ----------------------------------------------------------------- soak


@pytest.mark.slow
def test_a_10_minute_soak_keeps_every_stage_within_10_percent_of_its_memory(tmp_path):
    """`mfvan run` on a 100 fps synthetic camera for 10 minutes (MFVAN_SOAK_S to change it,
    for a quick look): after a minute's warm-up, no stage's resident memory grows by more
    than 10%, no stage restarts, and every frame ingest sends on reaches spot. (Before
    issue 38 it also wanted 90% of 100 fps: a bound of the box, not of the pipeline, that
    failed with two busy loops beside it.)"""
    seconds = float(os.environ.get("MFVAN_SOAK_S", 600))
    warm_up = min(60.0, seconds / 4)
    base = 23300 + os.getpid() % 500
    proc = subprocess.Popen(
        [*MFVAN, "run", "--source", "synth://?fps=100&seed=11", "--runtime-dir",
         str(tmp_path / "rt"), "--metrics-base-port", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def rss() -> dict[str, int]:
        """kB resident per stage child."""
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        sizes = {}
        for pid in out.stdout.split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            stage = next((a for a in cmd if a in ("ingest", "spot", "recognize")), None)
            if stage is None:
                continue  # `mfvan warm-up`, which the run starts and waits for first
            sizes[stage] = int(
                next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]
            )
        return sizes

    try:
        deadline = time.monotonic() + 180
        while len(rss()) < 3 and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(warm_up)
        first = rss()
        peak = dict(first)
        end = time.monotonic() + seconds - warm_up
        while time.monotonic() < end:
            time.sleep(10.0)
            for stage, kb in rss().items():
                peak[stage] = max(peak.get(stage, 0), kb)
        assert proc.poll() is None, "the run is still going"
        from helpers import scrape

        assert scrape(base - 1, "mfvan_restarts_total") == 0
        # what the pipeline counts, not what an idle box renders: every frame ingest sent
        # on reached spot (but those in flight between the two scrapes), and it ran
        frames = scrape(base + 1, "mfvan_frames_in_total")
        sent = scrape(base, "mfvan_frames_out_total")
        assert frames <= sent <= frames + 300, f"ingest sent {sent} frames, {frames} reached spot"
        assert frames >= 10 * (seconds - 30), f"only {frames} frames reached spot"
        growth = {s: peak[s] / first[s] - 1 for s in first}
        print("soak: RSS after warm-up (kB)", first, "peak", peak, "growth", growth)
        assert all(g <= 0.10 for g in growth.values()), growth
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Hook(BaseHTTPRequestHandler):
    """A webhook that takes every POST and keeps its JSON body."""

    def do_POST(self):
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _sse_events(port: int, into: list) -> None:
    """Read the view's /live feed, appending the data of each `event` it sends to `into`."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        kind, buffer = "", b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"event: "):
                    kind = line[7:].decode().strip()
                elif line.startswith(b"data: ") and kind == "event":
                    into.append(json.loads(line[6:]))


class _Consumer:
    """One consumer process of the events at `endpoint`, and what reached its far side
    (`received()`: event dicts) and what it counted as malformed (`malformed()`)."""

    def __init__(self, kind: str, endpoint: str, tmp_path: Path):
        self.kind, self.port, self.got = kind, free_port(), []
        self.stops = []  # how to stop the servers beside it
        if kind == "record":
            self.db = tmp_path / "events.db"
            argv = ["record", endpoint, "--db", str(self.db), "--batch-s", "0.2"]
        elif kind == "webhook":
            hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
            hook.bodies = self.got
            threading.Thread(target=hook.serve_forever, daemon=True).start()
            self.stops.append(hook.shutdown)
            url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
            argv = ["forward", endpoint, "--webhook", url, "--metrics-port", str(self.port)]
        elif kind == "mqtt":
            broker = Broker(tmp_path, free_port())
            broker.start()
            self.listener = Listener(broker.port)
            self.stops += [self.listener.close, broker.stop]
            argv = ["forward", endpoint, "--mqtt", f"127.0.0.1:{broker.port}",
                    "--metrics-port", str(self.port)]  # fmt: skip
        elif kind == "subscribe":  # its JSON lines, read as a script reads them
            argv = ["subscribe", endpoint, "--json"]
        else:  # the web view, read as a browser reads its live feed
            argv = ["web", "--events", endpoint, "--bind", f"127.0.0.1:{self.port}"]
        self.log = tmp_path / "consumer.log"
        out = subprocess.PIPE if kind == "subscribe" else None
        self.proc = subprocess.Popen([*MFVAN, *argv], stderr=open(self.log, "w"), stdout=out)
        if kind == "subscribe":
            threading.Thread(target=self._lines, daemon=True).start()
        if kind == "web":
            assert until(lambda: port_open(self.port), 60), "the view came up"
            threading.Thread(target=_sse_events, args=(self.port, self.got), daemon=True).start()

    def _lines(self) -> None:
        for line in self.proc.stdout:
            self.got.append(json.loads(line))

    def received(self) -> list[dict]:
        if self.kind == "record":
            from mfvan.stream.outputs.store import EventStore, StoreError

            try:
                with EventStore(self.db, readonly=True) as store:
                    return store.query(limit=100_000)
            except (StoreError, sqlite3.Error):
                return []  # not made yet
        if self.kind == "mqtt":
            return self.listener.events()
        return list(self.got)

    def malformed(self) -> float:
        if self.kind in ("webhook", "mqtt"):
            return scrape(self.port, "mfvan_frames_dropped_total")
        if self.kind == "web":
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return json.load(r)["counts"]["malformed"]
        self.proc.send_signal(signal.SIGINT)  # record and subscribe say it at their end
        self.proc.wait(timeout=30)
        words = self.log.read_text().split("malformed messages dropped")[0].split()
        return float(words[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        for stop in self.stops:
            stop()


@pytest.mark.slow
@pytest.mark.parametrize("consumer", ["record", "webhook", "mqtt", "web", "subscribe"])
def test_fuzz_10000_events_to_every_consumer_process_loses_only_the_bad_ones(consumer, tmp_path):
    """10,000 random and mutated events (pass-through fields JSON cannot say among them)
    published beside 100 good ones to `mfvan record`, `mfvan forward` (webhook, MQTT), the
    web view's live feed and `mfvan subscribe --json`, each a real process: every good
    event reaches the far side (the store, the webhook's server, the MQTT broker's
    subscriber, a browser's feed, the JSON lines), the process lives on, and what decode
    refused is counted. Before: one event with bytes in `truth` took each of them down
    with a traceback; the fuzz then found integers beyond 64 bits (the recorder's
    OverflowError) and event ids with a CR (a webhook worker held 31 s in retries)."""
    if consumer == "mqtt" and MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt: mosquitto; .ci/run does it)")
    rng = np.random.default_rng(38)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    endpoint = f"ipc://{tmp_path}/events.ipc"
    pub.bind(endpoint)
    fields = dict(onset=1, apex=2, offset=3, t_capture=time.time_ns(), label="positive",
                  probs=[0.1, 0.8, 0.1], confidence=0.8, classes=["negative", "positive",
                  "surprise"], model="demo")  # fmt: skip
    good = [bytes(f) for f in protocol.encode("event", "cam1", 0, id=uuid7(), **fields)]
    bad = list(_mutations(rng, good, 10_000))
    target = _Consumer(consumer, endpoint, tmp_path)

    def goods() -> set[int]:
        return {e["seq"] for e in target.received() if e.get("stream") == "good"}

    try:
        warm = 0  # until the consumer's subscription (and its far side) is up
        while not any(e.get("stream") == "warm" for e in target.received()):
            assert warm < 300 and target.proc.poll() is None, target.log.read_text()
            protocol.send(pub, "event", "warm", warm, id=uuid7(), **fields)
            warm += 1
            time.sleep(0.2)
        for k in range(100):  # at the consumer's pace: a slow webhook drops (and counts)
            protocol.send(pub, "event", "good", k, id=uuid7(), **fields)
            for frames in bad[k * 100 : (k + 1) * 100]:
                pub.send_multipart(frames)
            assert until(lambda k=k: k in goods(), 60), f"good event {k} of 100 lost: {goods()}"
        assert until(lambda: len(goods()) == 100, 10), sorted(goods())
        assert target.proc.poll() is None, "the consumer lives on"
        # a mutation may still be a legal event (a bit flipped in a probability): delivered
        assert until(lambda: target.malformed() >= 5_000, 10), "what decode refused, counted"
    finally:
        pub.close(0)
        target.close()
    assert "Traceback" not in target.log.read_text()
