"""CURVE on the event socket: a subscriber with an authorized key receives events, one with
a wrong key receives nothing and is counted; non-local endpoints need keys or --insecure."""

import time

import pytest
import zmq
import zmq.auth
from conftest import free_port

from mfvan.stream import protocol, subscribe
from mfvan.stream.security import (
    Guard,
    InsecureEndpoint,
    check,
    client_curve,
    is_local,
    make_keys,
)


def test_endpoints_off_loopback_need_keys_or_an_explicit_insecure(tmp_path):
    assert is_local("ipc:///tmp/x.ipc") and is_local("tcp://127.0.0.1:5555")
    assert is_local("tcp://localhost:1") and is_local("tcp://[::1]:5555")
    assert not is_local("tcp://0.0.0.0:5555") and not is_local("tcp://*:5555")
    assert not is_local("tcp://10.0.0.5:5555")
    check("tcp://127.0.0.1:5555", None, False)
    with pytest.raises(InsecureEndpoint, match="--keys DIR"):
        check("tcp://0.0.0.0:5555", None, False)
    check("tcp://0.0.0.0:5555", None, True)
    check("tcp://0.0.0.0:5555", tmp_path, False)


def _publish_until(pub, sub, stop_after=40):
    for seq in range(stop_after):
        protocol.send(
            pub,
            "event",
            "cam1",
            seq,
            label="positive",
            probs=[0.2, 0.7, 0.1],
            classes=["negative", "positive", "surprise"],
            onset=1,
            apex=2,
            offset=3,
            model="test",
            t_apex=1,
        )
        try:
            return next(iter(sub))
        except StopIteration:
            continue
    return None


def test_only_an_authorized_key_receives_events(tmp_path):
    good = make_keys(tmp_path / "good")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "client")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    guard = Guard(ctx, pub, good)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        wrong = client_curve(good)
        wrong["public"], wrong["secret"] = zmq.auth.load_certificate(
            str(stranger / "client.key_secret")
        )
        with subscribe(endpoint, timeout_s=0.1, ctx=ctx, curve=wrong) as sub:
            assert _publish_until(pub, sub, 20) is None, "a wrong key receives nothing"
        deadline = time.monotonic() + 5
        while guard.refused == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guard.refused >= 1, "and its refusal is counted"
        with subscribe(endpoint, timeout_s=0.1, ctx=ctx, curve=client_curve(good)) as sub:
            event = _publish_until(pub, sub)
        assert event is not None and event.label == "positive"
        with subscribe(endpoint, timeout_s=0.1, ctx=ctx) as sub:
            assert _publish_until(pub, sub, 10) is None, "no key at all: nothing either"
    finally:
        guard.stop()
        pub.close(linger=0)
        ctx.term()


@pytest.mark.slow
def test_a_pipeline_split_over_tcp_runs_under_curve_and_a_stranger_gets_nothing(
    tmp_path, demo_weights
):
    """Every stage with the same keys folder: ingest -> spot -> recognize over tcp://
    with CURVE, events to an authorized subscriber; a spot stage holding other keys
    receives no frame, and ingest counts the refusal."""
    import threading

    from test_pipeline import synth_frames

    from mfvan.deploy.backends import TorchBackend
    from mfvan.stream import subscribe
    from mfvan.stream.metrics import Metrics
    from mfvan.stream.stages import Classifier, run_ingest, run_recognize, run_spot

    keys, stranger = make_keys(tmp_path / "keys"), make_keys(tmp_path / "stranger")
    frames_ep, pairs_ep, events_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    model, meta = demo_weights
    stop = threading.Event()
    m_in, m_spot, m_rec, m_bad = (Metrics(s) for s in ("ingest", "spot", "recognize", "spot"))
    frames, _ = synth_frames(6.0)
    # one context per stage, as in their own processes (a context has one ZAP handler)
    threads = [
        threading.Thread(
            target=run_recognize,
            args=(
                [pairs_ep],
                events_ep,
                Classifier(TorchBackend(model), meta["classes"], "demo"),
                m_rec,
                stop,
            ),
            kwargs={"keys": keys, "ctx": zmq.Context()},
        ),
        threading.Thread(
            target=run_spot,
            args=([frames_ep], pairs_ep, m_spot, stop),
            kwargs={"keys": keys, "ctx": zmq.Context()},
        ),
        # a stranger's spot stage on the same frames: refused at the handshake
        threading.Thread(
            target=run_spot,
            args=([frames_ep], f"tcp://127.0.0.1:{free_port()}", m_bad, stop),
            kwargs={"keys": stranger, "ctx": zmq.Context()},
        ),
    ]
    for t in threads:
        t.start()
    with subscribe(events_ep, timeout_s=60, curve=client_curve(keys)) as sub:
        feeder = threading.Thread(
            target=run_ingest,
            args=(frames, "cam1", frames_ep, m_in, stop),
            kwargs={"block": True, "keys": keys, "ctx": zmq.Context()},
        )
        feeder.start()
        event = next(iter(sub), None)
    feeder.join(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and m_spot.frames_in.labels(
        "spot", "cam1"
    )._value.get() <= len(frames):
        time.sleep(0.1)  # until the spot stage has taken every frame
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert m_spot.frames_in.labels("spot", "cam1")._value.get() == len(frames) + 1  # + eos
    assert m_spot.spots.labels("cam1")._value.get() >= 1
    assert event is not None and event.label in event.probs, "events through three CURVE hops"
    assert m_bad.frames_in.labels("spot", "cam1")._value.get() == 0, "the stranger got nothing"
    assert m_in.dropped.labels("ingest", "", "unauthorized")._value.get() >= 1
