"""CURVE on the event socket: a subscriber with an authorized key receives events, one with
a wrong key receives nothing and is counted; non-local endpoints need keys or --insecure."""

import time

import pytest
import zmq
import zmq.auth

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
            pub, "event", "cam1", seq, label="positive", probs=[0.2, 0.7, 0.1],
            classes=["negative", "positive", "surprise"], onset=1, apex=2, offset=3,
            model="test", t_apex=1,
        )  # fmt: skip
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
