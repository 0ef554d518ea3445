"""Helpers the tests share (imported by name: `from helpers import free_port`); the shared
fixtures are in conftest.py."""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, name: str) -> float:
    """The sum of a metric's series on a stage's /metrics (`name` without labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


@contextlib.contextmanager
def answering(answer: bytes):
    """A real loopback TCP server that reads each request and answers `answer`, whatever
    it is, then closes (HTTP cut off mid-answer, or not HTTP at all). Yields (port, a list
    that grows by one per answer)."""
    server = socket.create_server(("127.0.0.1", 0))
    answered: list[int] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)
                answered.append(1)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1], answered
    finally:
        server.close()


def fill(disk):
    """Fill `disk` with a ballast file; returns it (unlink it to give the space back)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return ballast


def ts_segment(path, seed: int, fps: float = 60.0, seconds: float = 15.0):
    """A camera-like H.264 MPEG-TS segment of SynthME's camera at `path`; its media time
    starts at 0, as each segment of a recording that was cut does."""
    from mfvan.deploy.bench.cameras import camera_file

    made = camera_file(Path(path).parent / f"made-{seed}", seed, fps, seconds, "mpegts")
    made.rename(path)
    return Path(path)


# ----------------------------------------------------------------------------- MQTT

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if shutil.os.path.exists("/usr/sbin/mosquitto") else None
)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (apt: mosquitto; .ci/run does it)"
)


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` now."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def until(check, timeout: float = 15.0) -> bool:
    """Whether `check()` came true within `timeout` seconds (asked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


class Broker:
    """Mosquitto on 127.0.0.1:`port`, anonymous, no persistence; start and stop at will."""

    def __init__(self, tmp_path, port: int):
        self.config = tmp_path / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        self.port, self.proc = port, None

    def start(self):
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert until(lambda: port_open(self.port)), "mosquitto did not start"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Listener:
    """A plain paho subscriber to `mfvan/#` that resubscribes after each reconnect."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(1, 1)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("mfvan/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload, m.retain)
        )
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def events(self, topic="mfvan/events") -> list[dict]:
        return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
