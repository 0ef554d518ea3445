"""mfvan.stream: the live pipeline: sources (ingest), the wire protocol and its typed
messages, the three stages' loops (`stages`, `recognizer`) and what they share
(`sockets`), metrics, security, the outputs, and the client API (`client`).

Imports only mfvan.kernels of this project (tests/test_layout.py checks it); reaches the
network only through a backend handed in by mfvan.deploy.
"""

from . import messages  # noqa: F401  (first: it builds protocol.SCHEMAS)
from .client import Event, Subscription, subscribe  # noqa: F401  (the client API)
