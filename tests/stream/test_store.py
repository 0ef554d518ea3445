"""The event store: SQLite rows and snapshot files, queries, retention, the recorder as
a process (killed mid-write, the database stays whole), and `mfvan events`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from helpers import fill

from mfvan.stream.client import Event
from mfvan.stream.messages import uuid7
from mfvan.stream.outputs.store import EventStore, StoreError, StoreFull, magnified_difference

MFVAN = [sys.executable, "-m", "mfvan"]
CLASSES = ["negative", "positive", "surprise"]


def event(stream="cam1", seq=0, label="surprise", confidence=0.8, t=None, crops=True):
    """An event as a subscriber receives it, its apex at `t` (epoch s; default now)."""
    t_ns = int((time.time() if t is None else t) * 1e9)
    probs = {c: (confidence if c == label else (1 - confidence) / 2) for c in CLASSES}
    rng = np.random.default_rng(seq)
    onset = rng.integers(60, 200, (64, 64), np.uint8)
    apex = onset.copy()
    apex[10:20, 10:30] += 4  # a brow moves
    return Event(
        stream=stream,
        seq=seq,
        label=label,
        probs=probs,
        confidence=confidence,
        onset=100 + seq,
        apex=110 + seq,
        offset=130 + seq,
        model="demo-test",
        t_onset=t_ns - 50_000_000,
        t_apex=t_ns,
        t_offset=t_ns + 100_000_000,
        spot_score=2.5,
        region="brows",
        onset_crop=onset if crops else None,
        apex_crop=apex if crops else None,
        id=uuid7(t_ns),
        face=[100.0, 80.0, 240.0, 240.0],
    )


def test_events_and_snapshots_round_trip_and_filter(tmp_path):
    now = time.time()
    events = [
        event("cam1", 0, "surprise", 0.9, now - 3600),
        event("cam1", 1, "negative", 0.5, now - 60, crops=False),
        event("cam10", 0, "surprise", 0.7, now - 30),
    ]
    with EventStore(tmp_path / "events.db") as store:
        assert store.add(events) == 3
        assert store.add(events[:1]) == 0, "an id is kept once"
        # a reader while the writer holds the database open (WAL)
        with EventStore(tmp_path / "events.db", readonly=True) as reader:
            assert reader.count() == 3
    with EventStore(tmp_path / "events.db", readonly=True) as store:
        got = store.query()
        assert [e["id"] for e in got] == [e.id for e in events], "oldest first"
        assert got[0] == {**events[0].as_dict(), "snapshots": got[0]["snapshots"]}
        assert [e["id"] for e in store.query(stream="cam1")] == [events[0].id, events[1].id]
        assert [e["seq"] for e in store.query(label="surprise", min_confidence=0.8)] == [0]
        assert len(store.query(since=now - 120)) == 2
        assert len(store.query(until=now - 120)) == 1
        assert [e["stream"] for e in store.query(newest_first=True, limit=1)] == ["cam10"]
        onset_png, apex_png, diff_png = got[0]["snapshots"]
        import cv2

        assert (cv2.imread(onset_png, cv2.IMREAD_GRAYSCALE) == events[0].crops[0]).all()
        assert (cv2.imread(apex_png, cv2.IMREAD_GRAYSCALE) == events[0].crops[1]).all()
        diff = cv2.imread(diff_png, cv2.IMREAD_GRAYSCALE)
        assert diff[15, 15] == 128 + 32 and diff[40, 40] == 128, "what moved stands out"
        assert got[1]["snapshots"] == [], "no crops, no snapshots"
        assert store.get(events[2].id[:20])["stream"] == "cam10"
        assert store.get("0") is None


def test_magnified_difference_is_mid_grey_where_nothing_moved():
    a = np.full((8, 8), 100, np.uint8)
    b = a.copy()
    b[0, 0], b[1, 1] = 110, 90
    d = magnified_difference(a, b)
    assert d[0, 0] == 208 and d[1, 1] == 48 and d[4, 4] == 128


def test_retention_by_age_and_by_size(tmp_path):
    now = time.time()
    with EventStore(tmp_path / "e.db") as store:
        store.add([event("cam1", i, t=now - 86400 * (10 - i)) for i in range(10)])
        assert store.prune(max_age_s=86400 * 5.5) == 5
        left = store.query()
        assert [e["seq"] for e in left] == [5, 6, 7, 8, 9]
        media = tmp_path / "e.db.media"
        assert sum(1 for _ in media.rglob("apex.png")) == 5, "their files went with them"
        size = store.disk_bytes()
        store.add([event("cam1", 100 + i, t=now - 10 + i) for i in range(40)])
        assert store.disk_bytes() > size
        store.prune(max_bytes=size)
        assert store.disk_bytes() <= size
        kept = [e["seq"] for e in store.query()]
        assert kept and kept == sorted(kept) and kept[-1] == 139, "the newest are kept"
        assert sum(1 for _ in media.rglob("apex.png")) == len(kept)


def test_the_disk_filling_while_events_arrive_loses_the_least_it_can(small_disk):
    """600 events with crops into a 2 MB file system, 20 a commit (as `mfvan record`):
    every batch is committed while the database fits, an event whose snapshots do not fit
    is kept without them (counted, logged once), no half-written folder stays, and once
    space returns writing resumes. (Before: libpng's write error was a traceback that
    lost the whole batch, and 45 folders no row named stayed on the disk.)"""
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 400_000)  # room to give back later
    store = EventStore(small_disk / "events.db")
    now, kept, full = time.time(), 0, 0
    for b in range(30):
        try:
            kept += store.add([event("cam1", 20 * b + i, t=now + b) for i in range(20)])
        except StoreFull:
            full += 1
    assert store.media_failed > 0, "the snapshots filled the disk first"
    assert kept == store.count() > 0
    for row in store.query():  # every row's files are whole, every folder is a row's
        assert all(os.path.getsize(f) > 0 for f in row["snapshots"])
    named = {os.path.dirname(f) for r in store.query() for f in r["snapshots"]}
    assert {str(p) for p in store.media.glob("*/*")} == named
    ballast.unlink()  # space returns
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.add([event("cam2", 0, t=now + 60, crops=False)]) == 1
    assert store.count() == kept + 1
    store.close()


def test_a_recorder_retries_what_a_full_disk_refused(small_disk):
    """`record` keeps the events of a commit the full disk refused, tries again each batch
    interval, and commits them all once space returns."""
    from mfvan.stream.outputs.store import Keeping, record

    store = EventStore(small_disk / "events.db")
    ballast = fill(small_disk)
    stop = threading.Event()
    seen = {}

    class Source:  # a subscription: its events, then quiet intervals until stopped
        calls = 0
        events = [event("cam1", i, crops=False) for i in range(50)]

        def __iter__(self):
            if self.events:
                yield self.events.pop(0)  # one at a time: record breaks off at each batch
                return
            self.calls += 1
            time.sleep(0.1)
            if self.calls == 6:
                seen["while full"] = store.count()
                ballast.unlink()  # space returns
            if store.count() == 50 or self.calls > 200:
                stop.set()

    added = record(Source(), store, stop, Keeping(batch_s=0.1, batch_n=10))
    assert seen["while full"] == 0, "the full disk refused the commits"
    assert added == 50 and store.count() == 50 and store.lost == 0
    store.close()


@pytest.mark.parametrize("name", ["ev#1.db", "ev?x=1.db", "ev%41.db", "ev 1.db"])
def test_an_event_store_path_with_uri_characters_is_read_as_it_is(tmp_path, name):
    """The read-only store is opened by a URI: its path is quoted, so '#', '?' and '%'
    name the file they name. (Before: an empty file created and a traceback, or
    `ev%41.db` silently read `evA.db`.)"""
    with EventStore(tmp_path / name) as store:
        store.add([event("cam1", 1)])
    with EventStore(tmp_path / "evA.db") as other:
        other.add([event("cam9", 2), event("cam9", 3)])
    with EventStore(tmp_path / name, readonly=True) as store:
        assert [e["stream"] for e in store.query()] == ["cam1"]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted([name, "evA.db"])


def test_a_valid_store_on_read_only_media_is_read(small_disk):
    """A store on read-only media (a mounted archive) is read, not called "not an event
    store" (SQLite cannot make its WAL index there: it is opened immutable)."""
    with EventStore(small_disk / "e.db") as store:
        store.add([event("cam1", 1)])
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with EventStore(small_disk / "e.db", readonly=True) as store:
        assert store.count() == 1 and store.query()[0]["stream"] == "cam1"


def test_the_store_is_its_owners_alone(tmp_path):
    """Faces are biometric data: the database is 0600 and its media folders 0700 whatever
    the umask, so another local user reads neither. (Before: 0644 and 0755.)"""
    old = os.umask(0o022)
    try:
        with EventStore(tmp_path / "s" / "e.db") as store:
            store.add([event("cam1", 1)])
    finally:
        os.umask(old)
    assert (tmp_path / "s" / "e.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    media = tmp_path / "s" / "e.db.media"
    assert media.stat().st_mode & 0o777 == 0o700
    for folder in media.rglob("*"):
        if folder.is_dir():
            assert folder.stat().st_mode & 0o077 == 0 or folder.parent == media, folder


def test_a_file_that_is_not_an_event_store_is_refused(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        EventStore(tmp_path / "junk.db")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.close()
    with pytest.raises(StoreError, match="not an event store"):
        EventStore(tmp_path / "other.db")
    with pytest.raises(StoreError, match="no such event store"):
        EventStore(tmp_path / "absent.db", readonly=True)


def _publisher(endpoint: str, stop: threading.Event, sent: list, every_s: float = 0.002):
    """Events with crops published as the recognizer does, until `stop`: (seq, when)."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    seq = 0
    try:
        while not stop.is_set():
            e = event("cam1", seq)
            e.send(pub)
            sent.append((seq, time.monotonic()))
            seq += 1
            time.sleep(every_s)
    finally:
        pub.close(linger=0)


@pytest.mark.slow
def test_a_recorder_killed_mid_write_leaves_a_whole_database(tmp_path):
    endpoint = f"ipc://{tmp_path}/events.ipc"
    db = tmp_path / "events.db"
    stop, sent = threading.Event(), []
    publisher = threading.Thread(target=_publisher, args=(endpoint, stop, sent))
    publisher.start()
    recorder = subprocess.Popen(
        [*MFVAN, "record", endpoint, "--db", str(db), "--batch-s", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until it has committed a good many
            time.sleep(0.5)
            if db.exists() and _count(db) > 300:
                break
        time.sleep(0.37)  # somewhere inside a batch
        killed = time.monotonic()
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=10)
    finally:
        stop.set()
        publisher.join(timeout=10)
        if recorder.poll() is None:
            recorder.kill()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    seqs = [r[0] for r in con.execute("SELECT seq FROM events ORDER BY seq")]
    con.close()
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "committed batches are whole"
    # what was published a second before the kill was committed (the batch it was
    # gathering, at most 0.2 s of events, is what a kill may lose)
    early = [s for s, when in sent if seqs[0] <= s and when < killed - 1.0]
    assert set(early) <= set(seqs)
    with EventStore(db, readonly=True) as store:  # and mfvan reads it
        assert store.count() == len(seqs)
        assert all(len(e["snapshots"]) == 3 for e in store.query(limit=5))


def _count(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["list", "--limit", "-1"], "not a count of 1 or more"),
        (["list", "--limit", "0"], "not a count of 1 or more"),
        (["list", "--since", "nan"], "'nan' is not a time"),
        (["list", "--min-confidence", "nan"], "not a probability"),
        (["export", "--out", "/proc/no/such/dir/x.csv"], "--out /proc/no/such/dir/x.csv"),
    ],
)
def test_mfvan_events_refuses_what_would_list_all_or_nothing_in_one_line(tmp_path, argv, words):
    """`--limit -1` listed everything (SQLite's LIMIT -1), `--since nan` silently nothing,
    an `--out` it cannot write was a traceback."""
    with EventStore(tmp_path / "e.db") as store:
        store.add([event("door", 0)])
    run = subprocess.run(
        [*MFVAN, "events", *argv, "--db", str(tmp_path / "e.db")], capture_output=True, text=True
    )
    assert run.returncode != 0 and words in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_mfvan_events_lists_shows_and_exports(tmp_path):
    now = time.time()
    events = [event("door", i, ["surprise", "negative"][i % 2], 0.6 + i / 100, now - 100 + i)
              for i in range(6)]  # fmt: skip
    with EventStore(tmp_path / "e.db") as store:
        store.add(events)

    def mfvan(*argv):
        run = subprocess.run([*MFVAN, "events", *argv], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    db = ["--db", str(tmp_path / "e.db")]
    table = mfvan("list", *db, "--label", "surprise").splitlines()
    assert len(table) == 1 + 3 and "door" in table[1] and "surprise" in table[1]
    lines = mfvan("list", *db, "--json", "--since", "1h", "--min-confidence", "0.63")
    assert [json.loads(x)["seq"] for x in lines.splitlines()] == [3, 4, 5]
    shown = json.loads(mfvan("show", *db, events[4].id[:22]))
    assert shown["id"] == events[4].id and len(shown["snapshots"]) == 3
    out = tmp_path / "e.csv"
    mfvan("export", *db, "--format", "csv", "--out", str(out), "--stream", "door")
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [e.id for e in events]
    assert rows[0]["apex_iso"].endswith("Z") and float(rows[0]["confidence"]) == 0.6
    jsonl = mfvan("export", *db, "--format", "jsonl", "--until", str(now - 97))
    assert len(jsonl.splitlines()) == 3
    bad = subprocess.run(
        [*MFVAN, "events", "show", "--db", str(tmp_path / "none.db"), "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such event store" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_uuid7_sorts_by_time_and_can_be_reproduced():
    import uuid

    t = 1_796_307_056_396_000_000
    ids = [uuid7(t + i * 1_000_000) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    u = uuid.UUID(ids[0])
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert int(ids[0].replace("-", "")[:12], 16) == t // 1_000_000, "ms since the epoch first"
    assert uuid7(t, b"0123456789") == uuid7(t, b"0123456789") != uuid7(t, b"0123456788")
    assert uuid7(t) != uuid7(t)


def test_bad_pass_through_events_cost_themselves_alone_in_every_consumer(tmp_path):
    """1,000 events on a real PUB socket, every tenth carrying a pass-through field JSON
    cannot say (bytes, a msgpack extension type, 100 levels of nesting, infinity): the
    subscriber drops and counts exactly those, the store keeps every other one, and the
    JSON of each kept event renders. (Before: the recognizer published them and subscribe
    --json, record and forward exited with a traceback, the recorder losing its batch.)"""
    import msgpack

    from mfvan.stream import subscribe
    from mfvan.stream.outputs.store import Keeping, record

    bad_values = [b"raw", msgpack.ExtType(3, b"x"), [[[[[[[[[[[1]]]]]]]]]]], float("inf")]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = subscribe(f"tcp://127.0.0.1:{port}", timeout_s=0.2)
    EventStore(tmp_path / "e.db").close()
    stop = threading.Event()
    skipped = []

    def recording():  # the store is its thread's (SQLite's rule)
        with EventStore(tmp_path / "e.db") as store:
            record(sub, store, stop, Keeping(batch_s=0.1, batch_n=50))
            skipped.append(store.skipped)

    recorder = threading.Thread(target=recording)
    store = EventStore(tmp_path / "e.db", readonly=True)
    try:
        for _ in range(100):  # until the subscription has reached the publisher
            pub.send_multipart(event("warm", 0, crops=False).encode())
            if sub.socket.poll(100):
                break
        recorder.start()
        time.sleep(0.5)
        good = 0
        for i in range(1000):
            e = event("cam1", i, crops=False)
            frames = e.encode()
            if i % 10 == 0:  # the header re-packed with one bad pass-through field
                header = msgpack.unpackb(frames[1])
                header["note"] = bad_values[(i // 10) % len(bad_values)]
                frames[1] = msgpack.packb(header)
            else:
                good += 1
            pub.send_multipart(frames)
            if i % 50 == 0:
                time.sleep(0.01)  # a camera's pace, not a flood: nothing is lost to HWM
        deadline = time.monotonic() + 30
        while store.count() < good and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        recorder.join(timeout=10)
        pub.close(linger=0)
    assert store.query(stream="cam1") and len(store.query(stream="cam1")) == good == 900
    assert sub.dropped == 100 and skipped == [0]
    for row in store.query(stream="cam1"):
        json.dumps(row, allow_nan=False)
    store.close()
    sub.close()
    ctx.term()
