"""Who may connect. Faces are biometric data: by default every endpoint is loopback or
`ipc://`. A `tcp://` endpoint on any other interface needs ZeroMQ CURVE (encryption and
authentication, pyzmq's `zmq.auth`) unless the operator passes `insecure=True` on purpose.

Keys (`mfvan keys DIR`, `make_keys`) are pyzmq certificate files: `DIR/server.key(_secret)`
for the binding side, `DIR/client.key(_secret)` for a connecting side, and
`DIR/authorized/*.key`, the public keys the server lets in. A client whose key is not
there is refused by the ZAP handshake and counted (`Guard.refused`).

A stage given keys uses CURVE on each of its `tcp://` endpoints: `bind` as the server
(`guard`), `connect` as a client (`secure_client`); `ipc://` endpoints stay plain (they
never leave the machine, and file permissions guard them). So one keys folder, copied to
every host, secures a pipeline split across machines.

Imports nothing of this project.
"""

from __future__ import annotations

import ipaddress
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message


class InsecureEndpoint(ValueError):
    pass


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urlparse(endpoint.replace("tcp://", "tcp://", 1)).hostname or ""
    if host in ("localhost",):
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
    """Server and client key pairs in `folder`, the client's public key authorized."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        if not (folder / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(folder), name)
    authorized = folder / "authorized"
    authorized.mkdir(exist_ok=True)
    shutil.copy(folder / "client.key", authorized / "client.key")
    return folder


class Guard:
    """CURVE on a binding socket: the ZAP authenticator allowing `authorized/*.key`, and a
    monitor counting refused handshakes. One per ZeroMQ context (ZAP's endpoint is the
    context's): a stage process has one bound socket."""

    def __init__(self, ctx: zmq.Context, socket: zmq.Socket, keys: Path):
        keys = Path(keys)
        public, secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(keys / "authorized"))
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


def client_curve(keys: Path) -> dict:
    """The `curve` argument of `subscribe` for a client holding `keys/client.key_secret`
    and the server's public key `keys/server.key`."""
    keys = Path(keys)
    public, secret = zmq.auth.load_certificate(str(keys / "client.key_secret"))
    server, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    return {"public": public, "secret": secret, "server": server}


def guard(ctx: zmq.Context, socket: zmq.Socket, endpoint: str, keys: Path | None):
    """A Guard for a socket about to bind `endpoint` when it is tcp:// and keys are given
    (else None)."""
    if keys is None or not endpoint.startswith("tcp://"):
        return None
    return Guard(ctx, socket, keys)


def secure_client(socket: zmq.Socket, endpoints: list[str], keys: Path | None) -> None:
    """CURVE client keys on a socket about to connect to tcp:// `endpoints`."""
    tcp = [e for e in endpoints if e.startswith("tcp://")]
    if keys is None or not tcp:
        return
    if len(tcp) != len(endpoints):
        raise InsecureEndpoint(
            f"mixing tcp:// and local inputs under --keys is not supported: {endpoints}"
        )
    curve = client_curve(keys)
    socket.curve_publickey = curve["public"]
    socket.curve_secretkey = curve["secret"]
    socket.curve_serverkey = curve["server"]
