"""The wire protocol over real ZeroMQ sockets: round trips without copies, malformed and
foreign messages refused with a reason, drops instead of unbounded queues."""

import msgpack
import numpy as np
import pytest
import zmq

from mfvan.stream import protocol


@pytest.fixture
def pair():
    """A connected PUSH -> PULL pair over TCP on loopback."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    yield push, pull
    push.close(linger=0)
    pull.close(linger=0)
    ctx.term()


def test_a_frame_round_trips_without_copies(pair):
    push, pull = pair
    image = np.arange(480 * 640, dtype=np.uint8).reshape(480, 640)
    assert protocol.send(
        push, "frame", "cam1", 7, [image], formats=["grey"], t_capture=123, index=9
    )
    msg = protocol.recv(pull)
    assert (msg.kind, msg.stream, msg.seq) == ("frame", "cam1", 7)
    assert msg.fields == {"t_capture": 123, "index": 9}
    (got,) = msg.arrays
    assert got.shape == (480, 640) and got.dtype == np.uint8 and np.array_equal(got, image)
    assert not got.flags.owndata and not got.flags.writeable, "a view on the received frame"


def test_a_pair_with_its_flow_round_trips(pair):
    """The spot stage's Pair, crops and onset-to-apex flow, as the recognizer receives it:
    the flow is the third buffer, float16, bit for bit."""
    from mfvan.kernels.motion import wire_flow
    from mfvan.stream.messages import Pair

    push, pull = pair
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    apex = np.roll(onset, 1, axis=1)
    flow = wire_flow(onset, apex)
    times = dict.fromkeys(
        ("media_onset", "media_apex", "media_offset", "t_onset", "t_apex", "t_offset"), 0
    )
    common = dict(
        **times, t_capture=0, t_ingest=0, spot_score=2.5, amplitude=0.4, region="brow",
        spot_latency_ns=5,
    )  # fmt: skip
    crops = dict(onset_crop=onset, apex_crop=apex, onset=10, apex=14, offset=30)
    sent = Pair(stream="cam1", seq=3, **crops, **common, flow=flow)
    assert sent.send(push, wait_ms=1000)
    msg = protocol.recv(pull)
    assert msg.kind == "pair" and msg.fields["spot_score"] == 2.5 and "flow" not in msg.fields
    got = Pair.from_message(msg)
    assert np.array_equal(got.onset_crop, onset) and np.array_equal(got.apex_crop, apex)
    assert got.flow.dtype == np.float16 and np.array_equal(got.flow, flow)
    assert got == Pair(**{**sent.__dict__, "onset_crop": got.onset_crop, "apex_crop": got.apex_crop,
                          "flow": got.flow}), "every field as sent"  # fmt: skip
    # an older spot stage's pair, without flow, still decodes
    assert Pair(stream="cam1", seq=4, **crops, **common).send(push, wait_ms=1000)
    assert Pair.from_message(protocol.recv(pull)).flow is None


def test_the_flow_bound_is_the_kernels_bound():
    from mfvan.kernels.motion import MAX_FLOW

    assert protocol.MAX_FLOW == MAX_FLOW


def test_a_subscription_to_a_stream_gets_that_stream_only():
    """ZeroMQ matches topics by prefix: `cam1` must not receive `cam10` nor `cam1-0`."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("cam1"))
    try:
        got = []
        for seq in range(50):  # until the subscription has reached the publisher
            for stream in ("cam10", "cam1-0", "cam", "cam1", "cam2"):
                protocol.send(pub, "eos", stream, seq)
            while sub.poll(200):  # what came within 0.2 s of the last (a loaded box is slow)
                got.append(protocol.recv(sub, zmq.NOBLOCK))
            if len(got) >= 3:
                break
        assert len(got) >= 3 and {m.stream for m in got} == {"cam1"}
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("stream", ["cam\0", "cam\r\nINFO forged log line", "cam\x1b[2J"])
def test_a_stream_id_with_nul_or_a_control_character_is_refused(stream):
    """A stream id goes into log lines, MQTT topics and file names: before, a CR LF in
    one forged a log line."""
    with pytest.raises(protocol.Malformed, match="printable"):
        protocol.encode("eos", stream, 0)
    frames = protocol.encode("eos", "cam1", 0)
    frames[0] = b"cam1"  # version 1's bare topic
    with pytest.raises(protocol.Malformed, match="topic"):
        protocol.decode(frames)


DROP = object()  # a _header field to leave out


def _header(**changes):
    header = {"v": protocol.VERSION, "kind": "eos", "stream": "cam1", "seq": 0, "buffers": []}
    header.update(changes)
    return msgpack.packb({k: v for k, v in header.items() if v is not DROP})


def _image(shape, dtype="uint8"):
    """A header's spec and the buffer of an image of `shape`."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return {"shape": list(shape), "dtype": dtype, "format": ""}, b"\0" * n


def _frame(*shapes, dtype="uint8", **fields):
    """A frame message with images of `shapes` (one, for a legal frame)."""
    specs, buffers = zip(*(_image(s, dtype) for s in shapes), strict=True)
    return [b"cam1\0", _header(kind="frame", buffers=list(specs), **fields), *buffers]


def _event(**fields):
    """An event of label 'x', with `fields` (probs, classes) added."""
    header = _header(
        kind="event", onset=1, apex=2, offset=3, label="x", model="m", confidence=0.5, **fields
    )
    return [b"cam1\0", header]


def _pair(*shapes, **fields):
    specs, buffers = zip(*(_image(s) for s in shapes), strict=True)
    header = _header(kind="pair", buffers=list(specs), onset=1, apex=2, offset=3, **fields)
    return [b"cam1\0", header, *buffers]


def _pair_with_flow(shape, dtype="float16", value=0.0):
    """A 64 px pair whose third buffer, its flow, has `shape`, `dtype` and every value
    `value`."""
    specs, buffers = zip(*(_image((64, 64)) for _ in range(2)), strict=True)
    flow = np.full(shape, value, dtype)
    spec = {"shape": list(shape), "dtype": dtype, "format": "flow"}
    header = _header(kind="pair", buffers=[*specs, spec], onset=1, apex=2, offset=3)
    return [b"cam1\0", header, *buffers, flow.tobytes()]


@pytest.mark.parametrize(
    "frames, reason, words",
    [
        ([b"cam1"], "malformed", "at least topic and header"),
        ([b"cam1\0", b"\xc1\xff not msgpack"], "malformed", "not msgpack"),
        ([b"cam1\0", msgpack.packb([1, 2])], "malformed", "not a map"),
        ([b"cam1\0", _header(v=1)], "version", "version 1"),
        ([b"cam1\0", _header(seq=DROP)], "malformed", "lacks ['seq']"),
        ([b"cam1\0", _header(kind="video")], "malformed", "unknown kind"),
        ([b"cam9", _header()], "malformed", "topic and header stream differ"),
        ([b"cam1\0", _header(), b"extra"], "malformed", "buffers"),
        (
            [b"cam1\0", _header(kind="frame", buffers=[_image((16, 16))[0]]), b"x"],
            "malformed",
            "buffer of 1 bytes for shape (16, 16)",
        ),
        # well-formed headers whose fields or images a stage cannot take (each once
        # crashed a stage or a subscriber)
        ([b"cam1\0", _header(seq="abc")], "schema", "seq 'abc' is not a count"),
        ([b"cam1\0", _header(seq=None)], "schema", "seq None is not a count"),
        ([b"cam1\0", _header(seq=-1)], "schema", "seq -1"),
        ([b"cam1\0", _header(seq=1.5)], "schema", "seq 1.5"),
        # integers SQLite cannot hold, ids a header cannot carry (each took a consumer
        # process down, or held a webhook worker in retries: the consumer fuzz found them)
        ([b"cam1\0", _header(seq=2**63)], "schema", "seq 9223372036854775808"),
        (_pair((64, 64), (64, 64), clip_fps=2**63), "schema", "'clip_fps' cannot be"),
        (_event(probs=[1.0], classes=["x"], batch=2**63), "schema", "'batch' cannot be"),
        (_event(probs=[2**63], classes=["x"]), "schema", "'probs' cannot be"),
        (_event(probs=[1.0], classes=["x"], id="0190-\r\nX: y"), "schema", "'id' cannot be"),
        ([b"cam\r\n1\0", _header(stream="cam\r\n1")], "schema", "printable"),
        ([b"", _header(stream="")], "schema", "stream id"),
        ([b"1", _header(stream=1)], "schema", "stream id"),
        (_frame((32, 32), dtype="float64"), "schema", "float64, not uint8"),
        (_frame((1024,)), "schema", "shape (1024,)"),
        (_frame((0, 0)), "schema", "not 16..4096 px"),
        (_frame((8, 8, 3, 2)), "schema", "shape (8, 8, 3, 2)"),
        (_frame((32, 32, 4)), "schema", "shape (32, 32, 4)"),
        (_frame((8000, 8000)), "schema", "not 16..4096 px"),
        (_frame((32, 32), (32, 32)), "schema", "a frame has 2 buffers"),
        (_frame((32, 32), t_ingest="now"), "schema", "'t_ingest' cannot be 'now'"),
        (_frame((32, 32), t_capture=None), "schema", "'t_capture' cannot be None"),
        # wall-clock times from 1970 to 2200 (2^64 - 1 made an event of the year 2554)
        (_frame((32, 32), t_capture=2**64 - 1), "schema", "'t_capture' cannot be"),
        (_frame((32, 32), t_capture=-1), "schema", "'t_capture' cannot be -1"),
        (_pair((64, 64), (64, 64), t_apex=2**63), "schema", "'t_apex' cannot be"),
        (_pair((64, 64), (64, 64), media_apex=2**63), "schema", "'media_apex' cannot be"),
        (_frame((32, 32), key_frame=1), "schema", "'key_frame' cannot be 1"),
        (_pair((64, 64), (128, 128)), "schema", "differ in shape"),
        (_pair((64, 48), (64, 48)), "schema", "not square"),
        (_pair((8, 8), (8, 8)), "schema", "not 16..512 px"),
        (_pair((64, 64)), "schema", "a pair has 1 buffers"),
        (_pair((64, 64), (64, 64), spot_score="high"), "schema", "'spot_score' cannot be 'high'"),
        (_pair((64, 64), (64, 64), spot_score=float("nan")), "schema", "cannot be nan"),
        (_pair_with_flow((64, 64, 3)), "schema", "flow is float16 (64, 64, 3)"),
        (_pair_with_flow((32, 32, 2)), "schema", "flow is float16 (32, 32, 2)"),
        (_pair_with_flow((64, 64, 2), "uint8"), "schema", "flow is uint8"),
        (_pair_with_flow((64, 64, 2), "float64"), "schema", "flow is float64"),
        (_pair_with_flow((64, 64, 2), value=np.nan), "schema", "flow is not finite"),
        (_pair_with_flow((64, 64, 2), "float32", 1e30), "schema", "exceeds 64.0 px"),
        ([b"cam1\0", _header(kind="pair", buffers=[])], "schema", "lacks ['onset'"),
        (_event(probs=[0.5], classes=["a", "b"]), "schema", "probs and classes differ"),
        (_event(probs=[1.0], classes=["a"]), "schema", "label 'x' is not one of the classes"),
        ([b"cam1\0", b"\x80" * (protocol.MAX_HEADER + 1)], "malformed", "header of"),
        (
            [b"cam1\0", _header(buffers=[{"shape": [1], "dtype": "object", "format": ""}]), b"x"],
            "malformed",
            "bad buffer spec",
        ),
    ],
)
def test_malformed_and_foreign_messages_are_refused_with_a_reason(frames, reason, words):
    with pytest.raises(protocol.Malformed) as e:
        protocol.decode(frames)
    assert e.value.reason == reason
    assert words in str(e.value)


def _deep(levels: int) -> bytes:
    """A pair whose `truth` nests `levels` lists deep, packed by hand (msgpack's own
    packer refuses past 512 levels; a peer's bytes need not come from it)."""
    raw = _pair((64, 64), (64, 64), truth="MARKER")
    nested = b"\x91" * levels + b"\xc0"  # [[[...[nil]...]]]
    return [raw[0], raw[1].replace(b"\xa6MARKER", nested), *raw[2:]]


@pytest.mark.parametrize(
    "frames, reason, words",
    [
        (_pair((64, 64), (64, 64), truth={"a": b"bytes"}), "schema", "'truth' cannot be"),
        (
            _pair((64, 64), (64, 64), truth={"a": msgpack.ExtType(5, b"x")}),
            "schema",
            "'truth' cannot be",
        ),
        (_deep(1000), "schema", "'truth' cannot be"),
        (_pair((64, 64), (64, 64), truth={"a": float("inf")}), "schema", "'truth' cannot be"),
        (_pair((64, 64), (64, 64), truth={1: "int key"}), "malformed", "not msgpack"),
        (_pair((64, 64), (64, 64), truth={"a": list(range(2000))}), "schema", "'truth' cannot be"),
        (_pair((64, 64), (64, 64), note=b"bytes"), "schema", "'note' holds bytes"),
        (
            _pair((64, 64), (64, 64), note=msgpack.ExtType(5, b"x")),
            "schema",
            "'note' holds ExtType",
        ),
        (_pair((64, 64), (64, 64), note=[[[[[[[[["deep"]]]]]]]]]), "schema", "more than 8 levels"),
        (_pair((64, 64), (64, 64), note=float("nan")), "schema", "not finite"),
        (_event(note={2: "x"}), "malformed", "not msgpack"),
        ([b"cam1\0", _header(**{"1": 1, "x": {"y": [1, 2, {"z": b""}]}})], "schema", "holds bytes"),
    ],
)
def test_a_pass_through_field_holding_bytes_an_ext_type_or_deep_nesting_is_refused(
    frames, reason, words
):
    """A field a kind does not declare (or declares as a map: a source's ground truth)
    passes through to events and to every consumer, which write JSON: what JSON cannot say
    as it is (bytes, msgpack extension types, non-finite numbers, keys that are not
    strings, 1,000 levels of nesting) is refused at decode, so no consumer ever meets it
    (a key that is not a string msgpack itself refuses to unpack).
    (Before, the recognizer published it and subscribe --json, record and forward exited
    with a traceback, the recorder losing its whole batch.)"""
    with pytest.raises(protocol.Malformed) as e:
        protocol.decode(frames)
    assert e.value.reason == reason and words in str(e.value), e.value


def test_plain_pass_through_fields_still_pass():
    truth = {"label": "positive", "onset": 10, "apex": 14, "aus": [4, 7], "x": {"y": None}}
    msg = protocol.decode(_pair((64, 64), (64, 64), truth=truth, note=[1.5, "a", True]))
    assert msg.fields["truth"] == truth and msg.fields["note"] == [1.5, "a", True]


def test_a_malformed_message_over_a_socket_does_not_stop_the_next(pair):
    push, pull = pair
    push.send_multipart([b"cam1\0", b"garbage"])
    protocol.send(push, "frame", "cam1", 1, [np.zeros((16, 16), np.uint8)])
    with pytest.raises(protocol.Malformed):
        protocol.recv(pull)
    assert protocol.recv(pull).seq == 1


def test_send_drops_instead_of_queueing_without_bound():
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 4)
    push.bind("tcp://127.0.0.1:*")  # nobody connected: nowhere to queue
    try:
        sent = [
            protocol.send(push, "frame", "cam1", i, [np.zeros((16, 16), np.uint8)])
            for i in range(20)
        ]
        assert not any(sent), "with no peer every send is a counted drop, never a block"
    finally:
        push.close(linger=0)
        ctx.term()


def test_encode_refuses_what_cannot_be_decoded():
    with pytest.raises(ValueError, match="kind"):
        protocol.encode("video", "cam1", 0)
    with pytest.raises(ValueError, match="reserved"):
        protocol.encode("frame", "cam1", 0, buffers=[])
    with pytest.raises(ValueError, match="cannot be sent"):
        protocol.encode("frame", "cam1", 0, [np.array(["a"], dtype=object)])


def test_a_send_that_waits_keeps_nothing_of_its_socket():
    """The wait for room polls the socket without keeping a poller of it anywhere: a
    closed socket is freed (a cached `zmq.Poller` held every socket ever waited on, and a
    socket left open that way would have blocked its context's `term`)."""
    import gc
    import weakref

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)  # no peer: no room
    alive = weakref.ref(sock)
    assert not protocol.send(sock, "eos", "cam", 0, wait_ms=20)
    sock.close(linger=0)
    del sock
    gc.collect()
    assert alive() is None
    ctx.term()


def test_every_message_field_is_declared_once():
    """Each kind's wire schema is its typed class's declared fields (plus the wire-only
    `classes` of an event), each declared in one class body: a pair and its event share
    `Spotted`'s declarations (the same Field objects), nothing redeclares an inherited
    field, and no module reads a message's buffers by position but protocol.py."""
    import ast
    import dataclasses
    from pathlib import Path

    from mfvan.stream import messages

    for kind, cls in messages.KINDS.items():
        schema = protocol.SCHEMAS[kind]
        declared = {f.name for f in cls.header_fields()} | set(cls.wire_only())
        assert set(schema.fields) == declared, kind
        for base in cls.__mro__[1:]:
            own = set(vars(cls).get("__annotations__", {}))
            inherited = (
                {f.name for f in dataclasses.fields(base)}
                if dataclasses.is_dataclass(base)
                else set()
            )
            assert not own & inherited, f"{cls.__name__} redeclares {own & inherited}"
    for name in (f.name for f in messages.Spotted.spotted_fields()):
        pair, event = messages.Pair.__dataclass_fields__, messages.Event.__dataclass_fields__
        assert pair[name] is event[name] is messages.Spotted.__dataclass_fields__[name]
    root = Path(messages.__file__).resolve().parents[1]
    readers = []
    for path in root.rglob("*.py"):
        if {"tests", ".venv", "build"} & set(path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and getattr(node.value, "attr", "") == "arrays":
                readers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert [r for r in readers if not r.startswith("stream/protocol.py")] == []


def test_an_event_carries_every_field_of_its_pair():
    """Before: `amplitude` was in the pair but not carried to the event (a list of the
    fields to carry had drifted from the pair's)."""
    from mfvan.stream.messages import Event, Pair, uuid7

    crop = np.zeros((64, 64), np.uint8)
    values = {f.name: 7 for f in Pair.spotted_fields() if f.metadata["check"](7)}
    values |= {"spot_score": 2.5, "amplitude": 0.4, "region": "brow", "truth": {"k": 1},
               "face": [1.0, 2.0, 3.0, 4.0], "clip_fps": 100.0}  # fmt: skip
    pair = Pair(stream="cam1", onset_crop=crop, apex_crop=crop, **values)
    event = Event.of(pair, id=uuid7(), label="a", probs={"a": 1.0}, confidence=1.0, model="m")
    got = Event.from_message(protocol.decode(event.encode()))
    assert {k: getattr(got, k) for k in values} == values
    assert set(pair.header()) <= set(got.header())
