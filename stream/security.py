"""Who may connect. Faces are biometric data: by default every endpoint is loopback or
`ipc://`. A `tcp://` endpoint on any other interface needs ZeroMQ CURVE (encryption and
authentication, pyzmq's `zmq.auth`) unless the operator passes `insecure=True` on purpose.

Keys (`mfvan keys DIR`, `make_keys`) are pyzmq certificate files, one pair per role, so
that a key given to one kind of peer cannot do what another does:
- `server.key(_secret)`: every binding side (ingest's frames, spot's pairs, the
  recognizer's events);
- `stage.key(_secret)`: a stage connecting to another (spot pulls frames, the recognizer
  pulls pairs); its public key is in `authorized/stages/`, which ingest and spot let in;
- `subscriber.key(_secret)`: a subscriber of events; its public key is in
  `authorized/subscribers/`, which only the recognizer's event socket lets in. So a
  subscriber's key cannot pull faces from ingest.
More public keys dropped into either folder let more peers in. Secret keys are written
0600 and the folders 0700 whatever the umask. A client whose key is not authorized is
refused by the ZAP handshake, counted at once (`mfvan_frames_dropped_total{reason=
"unauthorized"}`) and logged; a refused subscriber is told so (`mfvan.stream.client`).

A stage given keys uses CURVE on each of its `tcp://` endpoints: `bind` as the server
(`guard`), `connect` as a client (`secure_client`); `ipc://` endpoints stay plain (they
never leave the machine, and the runtime folder's permissions guard them). So one keys
folder, copied to every host, secures a pipeline split across machines (give a
subscriber's host only `server.key` and the `subscriber.key` pair).

`bind` refuses an `ipc://` endpoint that another process is listening on (ZeroMQ would
silently take the path over, and the other process would lose its peers).

Imports nothing of this project.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket as _socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

ROLES = {"stage": "stages", "subscriber": "subscribers"}  # client role -> authorized/ folder


class EndpointError(ValueError):
    """An endpoint this process must not or cannot use; the message says why."""


class InsecureEndpoint(EndpointError):
    pass


class EndpointInUse(EndpointError):
    pass


class KeysError(EndpointError):
    """A keys folder that is missing or incomplete."""


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    return is_loopback(urlparse(endpoint.replace("tcp://", "tcp://", 1)).hostname or "")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or '*': could be any interface


def check(endpoint: str, keys: Path | None, insecure: bool) -> None:
    """Refuse a non-local endpoint without CURVE keys, unless explicitly insecure."""
    if not is_local(endpoint) and keys is None and not insecure:
        raise InsecureEndpoint(
            f"{endpoint} is reachable from other machines: give --keys DIR (CURVE "
            "encryption and authentication; `mfvan keys DIR` makes them) or pass --insecure"
        )


def make_keys(folder: Path) -> Path:
    """The server's and each role's key pairs in `folder`, each role's public key
    authorized for that role; secret keys 0600 and folders 0700 whatever the umask.
    Existing keys are kept."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise KeysError(f"{folder} exists and is not a folder")
    old = os.umask(0o077)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("server", *ROLES):
            if not (folder / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(str(folder), name)
        for role, sub in ROLES.items():
            authorized = folder / "authorized" / sub
            authorized.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / f"{role}.key", authorized / f"{role}.key")
    finally:
        os.umask(old)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    return folder


def check_keys(folder: Path) -> None:
    """`KeysError` unless `folder` holds what a stage needs: the server's and the stage
    role's key pairs and both authorized/ folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeysError(f"keys folder {folder} does not exist (make it with `mfvan keys DIR`)")
    _certificate(folder / "server.key_secret")
    client_curve(folder, "stage")
    for sub in ROLES.values():
        if not (folder / "authorized" / sub).is_dir():
            raise KeysError(f"{folder / 'authorized' / sub} is missing (`mfvan keys DIR`)")


def _certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeysError(f"{path} is missing (make keys with `mfvan keys DIR`)")
    try:
        return zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise KeysError(f"{path} is not a CURVE key file: {e}") from None


class Guard:
    """CURVE on a binding socket: the ZAP authenticator allowing `authorized/*.key`, and a
    monitor counting refused handshakes. One per ZeroMQ context (ZAP's endpoint is the
    context's): a stage process has one bound socket."""

    def __init__(
        self,
        ctx: zmq.Context,
        socket: zmq.Socket,
        keys: Path,
        on_refused=None,
        role: str = "stage",
    ):
        keys = Path(keys)
        public, secret = _certificate(keys / "server.key_secret")
        authorized = keys / "authorized" / ROLES[role]
        if not authorized.is_dir():
            raise KeysError(f"{authorized} is missing (make keys with `mfvan keys DIR`)")
        self.on_refused = on_refused or (lambda: None)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(authorized))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        self.refused = 0
        self._socket = socket
        # refused: a client key not authorized (AUTH), or a client that does not even hold
        # this server's public key, so the handshake cannot be read (PROTOCOL)
        self._refusals = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        self._monitor = socket.get_monitor_socket(self._refusals)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        """Count refused handshakes; the monitor socket lives and dies in this thread."""
        try:
            while not self._stopping.is_set():
                if self._monitor.poll(100):
                    event = recv_monitor_message(self._monitor)
                    if event["event"] & self._refusals:
                        self.refused += 1
                        self.on_refused()
        finally:
            self._monitor.close(linger=0)

    def stop(self) -> None:
        """Before the guarded socket is closed. The monitor is turned off while the watcher
        still reads it: libzmq's I/O thread sends each event under the monitor's lock, and
        to a peer that is gone it waits forever, so turning it off after the watcher had
        closed its end (as before) deadlocked when a refused client's event came in
        between (pyzmq holds the GIL while it waits for that lock)."""
        self._socket.disable_monitor()
        self._stopping.set()
        self._thread.join(timeout=5)
        self.auth.stop()


def client_curve(keys: Path, role: str = "subscriber") -> dict:
    """The `curve` argument of `subscribe` (and a stage's client keys): the `role`'s key
    pair `keys/<role>.key_secret` and the server's public key `keys/server.key`."""
    keys = Path(keys)
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    public, secret = _certificate(keys / f"{role}.key_secret")
    server, _ = _certificate(keys / "server.key")
    if secret is None:
        raise KeysError(f"{keys / f'{role}.key_secret'} holds no secret key")
    return {"public": public, "secret": secret, "server": server}


def guard(
    ctx: zmq.Context,
    socket: zmq.Socket,
    endpoint: str,
    keys: Path | None,
    on_refused=None,
    role: str = "stage",
):
    """A Guard for a socket about to bind `endpoint` when it is tcp:// and keys are given
    (else None), letting in the clients of `role`; `on_refused()` is called for each
    refused handshake as it happens."""
    if keys is None or not endpoint.startswith("tcp://"):
        return None
    return Guard(ctx, socket, keys, on_refused, role)


def secure_client(
    socket: zmq.Socket, endpoints: list[str], keys: Path | None, role: str = "stage"
) -> None:
    """CURVE client keys of `role` on a socket about to connect to tcp:// `endpoints`."""
    tcp = [e for e in endpoints if e.startswith("tcp://")]
    if keys is None or not tcp:
        return
    if len(tcp) != len(endpoints):
        raise InsecureEndpoint(
            f"mixing tcp:// and local inputs under --keys is not supported: {endpoints}"
        )
    curve = client_curve(keys, role)
    socket.curve_publickey = curve["public"]
    socket.curve_secretkey = curve["secret"]
    socket.curve_serverkey = curve["server"]


HEARTBEAT_MS = 1000  # a tcp:// peer silent for HEARTBEAT_TIMEOUT_MS is dropped and redialled
HEARTBEAT_TIMEOUT_MS = 3000
CONNECT_TIMEOUT_MS = 1000


def keepalive(socket: zmq.Socket) -> None:
    """ZeroMQ heartbeats and a connect timeout on a socket, so that a network partition
    ends quickly once the link is back. Without them a TCP connection through a 5 s
    outage waits for its own retransmission backoff (up to several seconds after the
    link returns), and a connect attempt made during the outage waits for the kernel's
    SYN backoff. With them, the connection is dropped after 3 s of silence and redialled
    every 100 ms, each attempt given up after 1 s."""
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    socket.setsockopt(zmq.RECONNECT_IVL, 100)


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """`socket.bind(endpoint)`, refusing an ipc:// path another process listens on
    (`EndpointInUse`); a stale socket file left by a dead process is taken over."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if os.path.exists(path) and _listening(path):
            raise EndpointInUse(
                f"{endpoint} is in use by another process (another run sharing the same "
                "runtime folder or endpoint?)"
            )
    if "[" in endpoint:
        socket.setsockopt(zmq.IPV6, 1)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == zmq.EADDRINUSE:
            raise EndpointInUse(f"{endpoint} is in use by another process") from None
        raise EndpointError(f"cannot bind {endpoint}: {e.strerror}") from None


def connect(socket: zmq.Socket, endpoint: str) -> None:
    """`socket.connect(endpoint)`, with IPv6 on for a bracketed address, and a clear error
    for an endpoint ZeroMQ cannot parse."""
    if "[" in endpoint:
        socket.setsockopt(zmq.IPV6, 1)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as e:
        raise EndpointError(
            f"cannot connect to {endpoint!r}: {e.strerror} (an endpoint looks like "
            "tcp://HOST:PORT or ipc:///path)"
        ) from None


def _listening(path: str) -> bool:
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
