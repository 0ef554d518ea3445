"""Events to HTTP endpoints: each event's JSON POSTed to every configured URL.

    out = WebhookOutput(["https://example.org/hook"], secret=b"...")
    out.send(event)          # never blocks: queued, or dropped and counted

One worker thread per URL takes events from a bounded queue (`queue`; a full queue drops
the new event and counts it) and POSTs `Event.as_dict()` (no pixels) as JSON. A failure
(no connection, a timeout, a 5xx or 429 answer) is retried with exponential backoff
(`first_delay_s` doubling, at most `retries` times), then the event is dropped and
counted; a 4xx answer other than 429 is not retried (the endpoint refuses this event).
With `secret`, the body is signed as GitHub signs its webhooks: header
`X-Mfvan-Signature-256: sha256=<HMAC-SHA256 of the body, hex>`, so the receiver can tell
the events are ours. `X-Mfvan-Event` carries the event's id (a receiver can drop a
retried duplicate by it).

Standard library only (urllib), so nothing more to install for it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import logging
import os
import queue as queues
import socket
import threading
import time
import urllib.parse

from . import NO_COUNTERS, Counters, OutputKind

log = logging.getLogger("mfvan.outputs")


def post(url: str, body: bytes, headers: dict, timeout_s: float) -> int:
    """POST `body` to `url`; the answer's status. A 3xx is not followed (urllib re-sent a
    POST as a GET without its body, and it was counted sent). Each read or write may take
    `timeout_s`, and the whole exchange at most 3x that: an endpoint that trickles its
    answer a byte at a time is cut off (`TimeoutError`), where a per-read timeout alone
    held the worker forever."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout_s)
    cut = threading.Event()

    def cut_off():
        cut.set()
        if conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
            except OSError:
                pass

    watchdog = threading.Timer(3 * timeout_s, cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body, headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    except (OSError, http.client.HTTPException):
        if cut.is_set():
            raise TimeoutError(f"no whole answer within {3 * timeout_s:g} s") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


def shown(url: str) -> str:
    """A webhook's URL as logs show it: scheme and host only (its path and query often
    hold a secret token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Mfvan-Signature-256` header's value for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookOutput:
    name = "webhook"

    def __init__(
        self,
        urls: list[str],
        secret: bytes | None = None,
        timeout_s: float = 5.0,
        retries: int = 5,
        first_delay_s: float = 0.5,
        queue: int = 1000,
        counters: Counters = NO_COUNTERS,
    ):
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {shown(url)!r}: an http:// or https:// URL")
        self.secret, self.timeout_s = secret, timeout_s
        self.retries, self.first_delay_s = retries, first_delay_s
        self.dropped = self.sent = 0
        self.on_drop, self.on_sent = counters.on_drop, counters.on_sent
        self._stop = threading.Event()
        self._queues = {url: queues.Queue(queue) for url in urls}
        self._threads = [
            threading.Thread(target=self._work, args=(url, q), name="mfvan-webhook", daemon=True)
            for url, q in self._queues.items()
        ]
        for thread in self._threads:
            thread.start()

    def send(self, event) -> bool:
        """Queue one event for every URL; False when a URL's queue was full (dropped)."""
        body = json.dumps(event.as_dict()).encode()
        ok = True
        for q in self._queues.values():
            try:
                q.put_nowait((event.id, body))
            except queues.Full:
                ok = self._drop("queue")
        return ok

    def _drop(self, reason: str) -> bool:
        self.dropped += 1
        self.on_drop(reason)
        return False

    def _work(self, url: str, q: queues.Queue) -> None:
        while not self._stop.is_set():
            try:
                event_id, body = q.get(timeout=0.2)
            except queues.Empty:
                continue
            self._deliver(url, event_id, body)

    def _deliver(self, url: str, event_id: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "X-Mfvan-Event": event_id}
        if self.secret:
            headers["X-Mfvan-Signature-256"] = signature(self.secret, body)
        delay = self.first_delay_s
        for attempt in range(self.retries + 1):
            try:
                code = post(url, body, headers, self.timeout_s)
            # refused, reset, timed out, or an answer that is not HTTP
            except (OSError, ValueError, http.client.HTTPException) as e:
                code, why = None, str(e) or type(e).__name__
            if code is not None and 200 <= code < 300:
                self.sent += 1
                self.on_sent()
                return
            if code is not None and 300 <= code < 400:
                log.warning(
                    "webhook %s answered HTTP %d (a redirect, not followed): event %s not "
                    "delivered",
                    shown(url),
                    code,
                    event_id,
                )
                self._drop("failed")
                return
            if code is not None and code < 500 and code != 429:
                log.warning("webhook %s refused event %s: HTTP %d", shown(url), event_id, code)
                self._drop("refused")
                return
            if code is not None:
                why = f"HTTP {code}"
            if attempt < self.retries:
                log.info("webhook %s: %s; again in %.1f s", shown(url), why, delay)
                if self._stop.wait(delay):
                    break
                delay *= 2
        log.warning("webhook %s: gave up on event %s", shown(url), event_id)
        self._drop("failed")

    def close(self, drain_s: float = 2.0) -> None:
        """Stop the workers, after at most `drain_s` for what is queued."""
        deadline = time.monotonic() + drain_s
        while any(not q.empty() for q in self._queues.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--webhook",
        action="append",
        metavar="URL",
        help="POST each event's JSON here (repeatable); signed when MFVAN_WEBHOOK_SECRET is "
        "set (header X-Mfvan-Signature-256)",
    )


def _build(args: argparse.Namespace, counters: Counters) -> WebhookOutput:
    secret = os.environ.get("MFVAN_WEBHOOK_SECRET")
    return WebhookOutput(args.webhook, secret.encode() if secret else None, counters=counters)


KIND = OutputKind(
    "webhook", _add_options, lambda args: bool(args.webhook), _build, secrets=("webhook",)
)
