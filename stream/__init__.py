"""mfvan.stream: the live pipeline (ingest, wire protocol, spotter, recognizer, metrics).

Imports mfvan.kernels; reaches the network only through backends handed in by mfvan.deploy.
"""

from .subscribe import Event, subscribe  # noqa: E402,F401  (the client API)
