"""mfvan.stream: the live pipeline (ingest, wire protocol, spotter, recognizer, metrics).

Imports mfvan.kernels; reaches the network only through backends handed in by mfvan.deploy.
"""

from .client import Event, Subscription, subscribe  # noqa: F401  (the client API)
