"""Flow control with real sockets: a slow subscriber and a slow recognizer cost drops,
counted, never unbounded memory or latency; the producer never waits for them."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from mfvan.deploy.inference.backends import TorchBackend
from mfvan.stream import protocol, subscribe
from mfvan.stream.metrics import Metrics
from mfvan.stream.recognizer import Classifier, RecognizeConfig, run_recognize
from mfvan.stream.sockets import HWM


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 1e6


def _pair(i: int):
    """A fresh pair each time: queued zero-copy messages keep their own arrays alive, so
    an unbounded queue would show in memory."""
    return [np.full((128, 128), i % 251, np.uint8), np.full((128, 128), (i + 1) % 251, np.uint8)]


def _send(push, i: int, wait_ms: int = 0) -> bool:
    return protocol.send(
        push,
        "pair",
        "cam1",
        i,
        _pair(i),
        wait_ms=wait_ms,
        onset=i,
        apex=i + 1,
        offset=i + 2,
        t_apex=time.time_ns(),
        t_capture=time.time_ns(),
        t_spot=time.time_ns(),
    )


class SlowBackend:
    """The real network, `delay_s` slower per batch (an overloaded recognizer)."""

    def __init__(self, backend, delay_s: float):
        self.backend, self.delay_s, self.name = backend, delay_s, backend.name

    def __call__(self, onset, apex, flow=None):
        time.sleep(self.delay_s)
        return self.backend(onset, apex, flow)


def _first_event(push, sub, i: int):
    assert _send(push, i, wait_ms=5000)
    return next(iter(sub), None)


def _recognizer(tmp_path, weights, backend, metrics, **kw):
    model, meta = weights
    pairs, events = f"ipc://{tmp_path}/pairs.ipc", f"ipc://{tmp_path}/events.ipc"
    stop = threading.Event()
    thread = threading.Thread(
        target=run_recognize,
        args=(
            RecognizeConfig([pairs], events, **kw),
            Classifier(backend(TorchBackend(model)), meta["classes"], "demo"),
            metrics,
            stop,
        ),
    )
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.bind(pairs)
    thread.start()
    return push, events, stop, thread


def _published(m: Metrics) -> int:
    return sum(s._value.get() for s in m.events._metrics.values())


@pytest.mark.slow
def test_a_slow_subscriber_misses_events_counted_and_the_recognizer_never_waits(
    tmp_path, demo_weights
):
    """The subscriber reads 31 events slowly, then none until the recognizer has published
    all of them: the queues between (two high-water marks of 20 and the kernel's socket
    buffer, ~220 events here) cannot hold 600, so some are lost whatever the machine's
    speed. (Waiting only until the recognizer had *taken* every pair let a slow machine
    drain while it was still publishing, and lose none.)"""
    m = Metrics("recognize")
    push, events, stop, thread = _recognizer(tmp_path, demo_weights, lambda b: b, m, event_hwm=20)
    n = 600
    received = []
    try:
        with subscribe(events, timeout_s=2, hwm=20) as sub:
            k = 0
            while (first := _first_event(push, sub, k)) is None:
                k += 1  # until the subscription is up (a PUB forgets what came before)
            for i in range(k + 1, n):
                assert _send(push, i, wait_ms=5000)
            for event in sub:  # 20 ms per event: far slower than events come
                received.append(event)
                time.sleep(0.02)
                if len(received) > 30:
                    break
            while _published(m) < n:
                time.sleep(0.05)  # the recognizer has published every event ...
            received += list(sub)  # ... drain what is queued for us
            assert _send(push, n, wait_ms=5000)  # the last event shows the last gap
            received += [next(iter(sub))]
            missed = sub.missed
    finally:
        stop.set()
        thread.join(timeout=20)
        push.close(linger=0)
    assert _published(m) == n + 1, "the recognizer published every event, without waiting"
    assert missed > 0, "the slow subscriber lost some"
    assert received[-1].seq == n
    assert 1 + len(received) + missed == n + 1 - first.seq, "and knows exactly how many"
    # what was queued for the subscriber was bounded by the queues, not the backlog (a
    # count, not a time: how long that queue takes to drain depends on the machine)
    assert len(received) < n // 2


def test_a_slow_recognizer_costs_drops_not_memory_and_latency_stays_bounded(tmp_path, demo_weights):
    m = Metrics("recognize")
    push, events, stop, thread = _recognizer(
        tmp_path, demo_weights, lambda b: SlowBackend(b, 0.05), m, max_batch=8
    )
    n, sent, dropped = 3000, 0, 0
    try:
        with subscribe(events, timeout_s=5) as sub:
            k = 0
            while _first_event(push, sub, k) is None:
                k += 1
            rss = _rss_mb()
            for i in range(k + 1, n):  # 96 MB of pairs, as fast as a spot stage can send
                if _send(push, i):
                    sent += 1
                else:
                    dropped += 1
            grown = _rss_mb() - rss
            got = []
            for event in sub:
                got.append(event.times)
                if event.seq == sent + k:  # the last pair that went through
                    break
    finally:
        stop.set()
        thread.join(timeout=30)
        push.close(linger=0)
    assert dropped > n / 2, "the sender was refused, not blocked"
    assert sent + dropped == n - 1 - k
    assert grown < 40, f"memory bounded by the queues (grew {grown:.0f} MB, not ~96)"
    assert m.frames_in.labels("recognize", "cam1")._value.get() == sent + k + 1
    assert len(got) == sent
    # Bounded latency, counted in pairs (in seconds it depends on the machine): between a
    # pair's sending and its taking, the recognizer took at most what the queues hold
    # (two high-water marks of 64, the kernel's socket buffer, one batch), never the
    # backlog of thousands.
    taken = np.sort([t["t_received"] for t in got])
    ahead = [
        np.searchsorted(taken, t["t_received"]) - np.searchsorted(taken, t["t_spot"], "right")
        for t in got
    ]
    assert max(ahead) < 2 * HWM + 60, max(ahead)


def test_two_recognizers_share_the_pairs_of_one_spot_stage(tmp_path, demo_weights):
    """Scaling out: recognizers connected to the same pairs endpoint take turns (PUSH deals
    round-robin); a subscriber connected to both sees every event once."""
    model, meta = demo_weights
    pairs = f"ipc://{tmp_path}/pairs.ipc"
    outs = [f"ipc://{tmp_path}/events-{i}.ipc" for i in range(2)]
    stop = threading.Event()
    metrics = [Metrics("recognize"), Metrics("recognize")]
    # each recognizer's own context, ended here once both are done (not by the garbage
    # collector, in whichever thread it runs: test_security's split pipeline)
    contexts = [zmq.Context(), zmq.Context()]
    threads = [
        threading.Thread(
            target=run_recognize,
            args=(
                RecognizeConfig([pairs], out),
                Classifier(TorchBackend(model), meta["classes"], "demo"),
                m,
                stop,
            ),
            kwargs={"ctx": ctx},
        )
        for out, m, ctx in zip(outs, metrics, contexts, strict=True)
    ]
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.bind(pairs)
    for t in threads:
        t.start()
    sub = subscribe(outs[0], timeout_s=5)
    sub.socket.connect(outs[1])  # one SUB socket, both recognizers
    n = 40
    try:
        time.sleep(1.0)  # both recognizers connected before the first pair is dealt
        for i in range(n):
            assert _send(push, i, wait_ms=5000)
        events = []
        for event in sub:
            events.append(event)
            if len(events) == n:
                break
    finally:
        sub.close()
        stop.set()
        for t in threads:
            t.join(timeout=20)
        push.close(linger=0)
        if not any(t.is_alive() for t in threads):  # never under a running stage
            for ctx in contexts:
                ctx.destroy(linger=0)
    taken = [m.frames_in.labels("recognize", "cam1")._value.get() for m in metrics]
    assert sum(taken) == n and min(taken) >= n // 4, f"both took pairs: {taken}"
    assert sorted(e.onset for e in events) == list(range(n)), "every pair's event, once"
