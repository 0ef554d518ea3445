"""The event store: every event kept in SQLite, with its snapshot images on disk.

    store = EventStore("events.db")
    store.add([event, ...])                    # one transaction
    store.query(stream="door", label="surprise", since=t0, min_confidence=0.6)
    store.prune(max_age_s=30 * 86400, max_bytes=5e9)

One writer (the `mfvan record` process, or `mfvan analyze --db`), any number of readers:
the database is in WAL mode, so `mfvan events list` reads while the recorder writes, and
a writer killed mid-transaction (kill -9, power loss) leaves every committed event
readable and the rest rolled back (SQLite's journal; `synchronous=NORMAL` in WAL mode can
lose the last commits on power loss, never consistency). Each row holds the event's
searchable fields as columns (indexed by time, stream and label) and the whole event, as
`Event.as_dict()` gives it, as JSON (`event`), so a later event version loses nothing.

Snapshots: for an event that carries its crops (the recognizer's `--with-crops`), the
onset crop, the apex crop and their difference magnified (`magnified_difference`: mid
grey where nothing moved, lighter or darker where the apex is brighter or darker) as
PNG files, and its clip when it has one (`mfvan run --with-clips`) as `clip.mp4`, in
`<db>.media/<day>/<id>/`, named in the row (`snapshots`, relative to the
media folder). Retention by age and by size removes rows and their files together, oldest
first.

A full disk loses the least it can: an event whose snapshots cannot be written (a full
disk, a read-only media folder) is kept without them, its partial folder removed
(`media_failed`, logged once per failure kind); an event that cannot be rendered as JSON is
skipped alone (`skipped`); a commit that fails for want of space raises `StoreFull` with
the events still pending, and the recorder retries them when space returns. Snapshot
folders that no row names (left by a write that failed or a process killed between its
files and its commit) are removed at open and at each prune (`orphans_removed`).

Standard library (sqlite3) and OpenCV (PNG) only; imports nothing of mfvan but
`mfvan.stream`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..client import Event

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,          -- UUIDv7: sorts by time
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    spot_score REAL,
    onset_time REAL NOT NULL,     -- wall clock, seconds since the epoch
    apex_time REAL NOT NULL,
    offset_time REAL NOT NULL,
    model TEXT NOT NULL,
    snapshots TEXT,               -- JSON list of files under the media folder, or NULL
    bytes INTEGER NOT NULL DEFAULT 0,  -- of those files
    event TEXT NOT NULL           -- the whole event, Event.as_dict() as JSON
);
CREATE INDEX IF NOT EXISTS events_apex ON events (apex_time);
CREATE INDEX IF NOT EXISTS events_stream ON events (stream, apex_time);
CREATE INDEX IF NOT EXISTS events_label ON events (label, apex_time);
"""
COLUMNS = ("id", "stream", "seq", "label", "confidence", "spot_score", "onset_time")
COLUMNS += ("apex_time", "offset_time", "model", "snapshots", "bytes", "event")
# `EventStore.query`'s filters: each a condition on one value
FILTERS = {
    "stream": "stream = ?",
    "label": "label = ?",
    "since": "apex_time >= ?",
    "until": "apex_time < ?",
    "min_confidence": "confidence >= ?",
    "face": "json_extract(event, '$.face_id') = ?",
}
MAGNIFY = 8.0  # the difference image's gain: a 4-grey-level change shows as 32


log = logging.getLogger("mfvan.store")


class StoreError(RuntimeError):
    """A file that is not an mfvan event store (or one of a newer schema)."""


class StoreFull(StoreError):
    """A commit failed for want of space (or of a writable file): nothing of the batch
    was kept; the caller keeps it and tries again later."""


def magnified_difference(onset: np.ndarray, apex: np.ndarray, gain: float = MAGNIFY):
    """uint8: 128 + gain * (apex - onset), clipped. A micro-expression moves a few grey
    levels; magnified, the brow or lip corner that moved stands out of a flat grey."""
    diff = apex.astype(np.float32) - onset.astype(np.float32)
    return np.clip(128.0 + gain * diff, 0, 255).astype(np.uint8)


SNAPSHOTS = ("onset", "apex", "difference")  # an event's images, in the order shown


def snapshot_images(onset: np.ndarray, apex: np.ndarray):
    """(name, image) of an event's snapshots (`SNAPSHOTS`): its onset and apex crops and
    their magnified difference; the store writes them as NAME.png, the web view shows them."""
    return zip(SNAPSHOTS, (onset, apex, magnified_difference(onset, apex)), strict=True)


def write_clip(path: Path, crops, fps: float) -> None:
    """Grey face crops as an H.264 MP4 (PyAV), near-lossless (CRF 18) at `fps`."""
    import av

    crops = list(crops)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=max(1, int(round(fps))))
        stream.width, stream.height = crops[0].shape[1], crops[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for crop in crops:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="gray")
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))


def _clip_rate(event: Event) -> float:
    """Frames per second of an event's clip, as the spot stage measured it (30 when an
    older spot stage did not say)."""
    fps = event.fields.get("clip_fps") or 0.0
    return fps if 0 < fps <= 1000 else 30.0


class EventStore:
    """An event database at `path` (made if absent), its snapshots under `media` (default
    `<path>.media`). `readonly`: open for queries only (what `mfvan events` does)."""

    def __init__(self, path: str | Path, media: str | Path | None = None, readonly: bool = False):
        self.path = Path(path)
        self.media = Path(media) if media else self.path.with_name(self.path.name + ".media")
        try:
            self._open(readonly)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from None

    def _open(self, readonly: bool) -> None:
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"{self.path}: no such event store")
            # the path quoted: '#', '?' and '%' are URI syntax ("ev%41.db" is not "evA.db")
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
            if not os.access(self.path.parent, os.W_OK):  # read-only media: no WAL index
                uri += "&immutable=1"
            self.db = sqlite3.connect(uri, uri=True, timeout=10.0)
        else:
            # faces are biometric data: the store is its owner's alone (0600 files, 0700
            # folders), whatever the umask
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            self.db = sqlite3.connect(self.path, timeout=10.0)
            if fresh:
                os.chmod(self.path, 0o600)
        self.db.row_factory = sqlite3.Row
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.OperationalError as e:  # an I/O error, a full disk: not its content
            self.db.close()
            raise StoreFull(f"{self.path}: cannot be opened for writing: {e}") from None
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise StoreError(f"{self.path} is not an event store: {e}") from None
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(
                f"{self.path} is an event store of schema {version}; this mfvan reads up to "
                f"{SCHEMA_VERSION} (upgrade mfvan)"
            )
        if tables and "events" not in tables:
            self.db.close()
            raise StoreError(f"{self.path} is an SQLite database, but not an event store")
        self.media_failed = 0  # events kept without their snapshots
        self.skipped = 0  # events that could not be kept at all (not renderable)
        self.lost = 0  # events given up while the disk stayed full (`record`)
        self.orphans_removed = 0  # snapshot folders no row named
        self._told: set[str] = set()  # what was logged once
        if not readonly:
            if not tables:  # before the first table, or never: freed pages given back
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.commit()
            self.remove_orphans()

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing

    def add(self, events: Iterable[Event]) -> int:
        """Keep `events` (their snapshots first, then their rows in one transaction); an
        id already kept is left as it is. Returns how many rows were added. An event
        that cannot be kept is skipped alone (counted); one whose snapshots cannot be
        written is kept without them (counted). Raises `StoreFull` when the commit fails
        for want of space: then nothing of `events` was kept."""
        rows = []
        for event in events:
            try:
                rows.append(self._row(event))
            except (TypeError, ValueError, RecursionError) as e:
                self.skipped += 1
                self.warn_once("skipped", "event store: skipped an event it cannot keep: %s", e)
        try:
            with self.db:
                before = self.db.total_changes
                self.db.executemany(
                    f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(COLUMNS))})",
                    rows,
                )
                added = self.db.total_changes - before
        except sqlite3.OperationalError as e:  # SQLITE_FULL, SQLITE_IOERR, read-only
            for row in rows:  # their snapshots go too: no folder that no row names
                for folder in {Path(f).parent for f in json.loads(row[10] or "[]")}:
                    shutil.rmtree(self.media / folder, ignore_errors=True)
            raise StoreFull(f"{self.path}: {e}") from None
        self._told.discard("full")
        return added

    def warn_once(self, kind: str, message: str, *args) -> None:
        """Log `message` the first time `kind` happens (again only after it stopped)."""
        if kind not in self._told:
            self._told.add(kind)
            log.warning(message, *args)

    def _row(self, event: Event) -> tuple:
        if not event.id:
            raise ValueError(f"event {event.stream}#{event.seq} has no id (an old recognizer?)")
        d = json.dumps(event.as_dict(), allow_nan=False)  # what cannot be kept fails here
        try:
            files, size = self._snapshots(event)
        except Exception as e:  # OSError, cv2.error, PyAV's: a full disk, a read-only folder
            self.media_failed += 1
            self.warn_once("media", "event store: keeping events without snapshots: %s", e)
            files, size = [], 0
        else:
            self._told.discard("media")
        return (
            event.id,
            event.stream,
            event.seq,
            event.label,
            event.confidence,
            event.fields.get("spot_score"),
            event.onset_time,
            event.apex_time,
            event.offset_time,
            event.model,
            json.dumps(files) if files else None,
            size,
            d,
        )

    def _snapshots(self, event: Event) -> tuple[list[str], int]:
        """The event's PNGs written (when it carries its crops): (their paths relative to
        the media folder, their bytes)."""
        import cv2

        if len(event.crops) < 2:
            return [], 0
        onset, apex = (np.asarray(c) for c in event.crops[:2])
        day = time.strftime("%Y-%m-%d", time.gmtime(event.apex_time or time.time()))
        folder = Path(day) / event.id
        files, size = [], 0
        try:
            self.media.mkdir(mode=0o700, exist_ok=True)
            (self.media / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
            for name, image in snapshot_images(onset, apex):
                path = self.media / folder / f"{name}.png"
                if not cv2.imwrite(str(path), image):
                    raise OSError(f"could not write {path}")
                files.append(str(folder / path.name))
                size += path.stat().st_size
            if event.clip is not None and len(event.clip):
                path = self.media / folder / "clip.mp4"
                write_clip(path, event.clip, _clip_rate(event))
                files.append(str(folder / "clip.mp4"))
                size += path.stat().st_size
        except BaseException:
            shutil.rmtree(self.media / folder, ignore_errors=True)  # no half-written folder
            raise
        return files, size

    def remove_orphans(self) -> int:
        """Remove the snapshot folders (`<media>/<day>/<id>/`) that no row names; returns
        how many."""
        if not self.media.is_dir():
            return 0
        named = set()
        for (snapshots,) in self.db.execute(
            "SELECT snapshots FROM events WHERE snapshots IS NOT NULL"
        ):
            named.update(str(Path(f).parent) for f in json.loads(snapshots))
        removed = 0
        for day in self.media.iterdir():
            if not day.is_dir() or day.is_symlink():
                continue
            for folder in day.iterdir():
                if str(folder.relative_to(self.media)) not in named:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            if not any(day.iterdir()):
                day.rmdir()
        self.orphans_removed += removed
        return removed

    def prune(self, max_age_s: float | None = None, max_bytes: float | None = None) -> int:
        """Remove events older than `max_age_s` (by apex time), then the oldest until the
        database and the snapshots together hold at most `max_bytes`. Their snapshot
        folders go with them. Returns how many events were removed."""
        self.remove_orphans()
        removed = 0
        if max_age_s is not None:
            cutoff = time.time() - max_age_s
            removed += self._remove("SELECT id, snapshots FROM events WHERE apex_time < ?", cutoff)
        if max_bytes is not None:
            while self.disk_bytes() > max_bytes:
                n = self._remove(  # a tenth at a time: the file shrinks only after a vacuum
                    "SELECT id, snapshots FROM events ORDER BY apex_time LIMIT ?",
                    max(1, self.count() // 10),
                )
                if not n:
                    break
                removed += n
                self.db.execute("PRAGMA incremental_vacuum")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def _remove(self, select: str, *params) -> int:
        rows = self.db.execute(select, params).fetchall()
        with self.db:
            self.db.executemany("DELETE FROM events WHERE id = ?", [(r["id"],) for r in rows])
        for r in rows:
            for folder in {Path(f).parent for f in json.loads(r["snapshots"] or "[]")}:
                shutil.rmtree(self.media / folder, ignore_errors=True)
        return len(rows)

    def disk_bytes(self) -> int:
        """The database's files (with its WAL) and the snapshots' bytes."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        db = sum(p.stat().st_size for p in files if p.exists())
        return db + (self.db.execute("SELECT coalesce(sum(bytes), 0) FROM events").fetchone()[0])

    # ------------------------------------------------------------------ reading

    def query(self, limit: int | None = None, newest_first: bool = False, **filters) -> list[dict]:
        """Events (as `Event.as_dict()` gives them, with `snapshots`: the files' absolute
        paths) matching every filter given (`FILTERS`: stream, label, since, until,
        min_confidence, face; None: not filtered): `since`/`until` bound the apex time
        (seconds since the epoch), `min_confidence` the class probability, `face` the face's
        track id (read from the event's JSON: no column, so stores from before several faces
        were tracked answer too, their events having none)."""
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise TypeError(f"no such filter: {', '.join(sorted(unknown))}")
        where, params = [], []
        for name, value in filters.items():
            if value is not None:
                where.append(FILTERS[name])
                params.append(value)
        sql = "SELECT event, snapshots FROM events"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY apex_time DESC, id DESC" if newest_first else " ORDER BY apex_time, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._event(r) for r in self.db.execute(sql, params)]

    def get(self, event_id: str) -> dict | None:
        """One event by its id, or by a prefix of it that only one event has."""
        rows = self.db.execute(
            "SELECT event, snapshots FROM events WHERE id >= ? AND id < ? LIMIT 2",
            (event_id, event_id + "\uffff"),
        ).fetchall()
        return self._event(rows[0]) if len(rows) == 1 else None

    def distinct(self, column: str) -> list[str]:
        """The values of `stream` or `label` in the store, sorted (the web view's filters)."""
        if column not in ("stream", "label"):
            raise ValueError(f"distinct values of stream or label, not {column!r}")
        return [r[0] for r in self.db.execute(f"SELECT DISTINCT {column} FROM events ORDER BY 1")]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM events").fetchone()[0]

    def _event(self, row) -> dict:
        event = json.loads(row["event"])
        event["snapshots"] = [str(self.media / f) for f in json.loads(row["snapshots"] or "[]")]
        return event


@dataclass(frozen=True)
class Keeping:
    """How `record` commits and prunes: a batch is committed at most `batch_s` after its
    first event or once `batch_n` wait (one transaction each: a killed recorder loses at
    most the batch it was gathering); retention (`EventStore.prune` to `max_age_s` and
    `max_bytes`, each None for no limit) runs every `prune_every_s`."""

    batch_s: float = 1.0
    batch_n: int = 100
    max_age_s: float | None = None
    max_bytes: float | None = None
    prune_every_s: float = 60.0
    most_waiting: int = 10_000  # events held in memory while the disk is full (then oldest lost)


def record(
    subscription, store: EventStore, stop, keeping: Keeping = Keeping(), on_commit=None
) -> int:
    """Keep every event `subscription` (a `mfvan.stream.Subscription` with a short
    `timeout_s`) delivers, until `stop` is set, committed and pruned as `keeping` says.
    `on_commit(n_added)` after each commit. Returns the events added. While the disk is
    full the events wait in memory (up to `keeping.most_waiting`, the oldest then lost and
    counted in `store.lost`), and each batch interval the commit is tried again."""
    batch_s, batch_n, prune_every_s = keeping.batch_s, keeping.batch_n, keeping.prune_every_s
    max_age_s, max_bytes = keeping.max_age_s, keeping.max_bytes
    pending: list[Event] = []
    first = 0.0
    added = 0
    pruned = time.monotonic() - prune_every_s  # prune once at the start

    retry_at = 0.0  # while the disk is full: when to try the next commit

    def due() -> bool:
        now = time.monotonic()
        if not pending or now < retry_at:
            return False
        return len(pending) >= batch_n or now - first >= batch_s

    def commit():
        nonlocal added, pending, retry_at
        try:
            n = store.add(pending)
        except StoreFull as e:
            store.warn_once("full", "event store: %s; events wait for space", e)
            over = len(pending) - keeping.most_waiting
            if over > 0:
                store.lost += over
                pending = pending[over:]
            retry_at = time.monotonic() + batch_s
            return
        added += n
        pending = []
        if on_commit is not None:
            on_commit(n)

    while not stop.is_set():
        for event in subscription:  # ends after the subscription's timeout without one
            if not pending:
                first = time.monotonic()
            pending.append(event)
            if due() or stop.is_set():
                break
        if due():
            commit()
        if time.monotonic() - pruned >= prune_every_s:
            try:
                store.prune(max_age_s, max_bytes)
            except sqlite3.OperationalError as e:  # a full disk: next time
                store.warn_once("prune", "event store: retention failed: %s", e)
            pruned = time.monotonic()
    if pending:
        commit()
    if pending:
        store.lost += len(pending)
        log.error("event store: stopped with %d events it could not keep", len(pending))
    return added
