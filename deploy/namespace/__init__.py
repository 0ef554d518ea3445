"""mfvan: real-time micro-expression recognition (live pipeline, MFVAN training and
evaluation).

The client API, for users' own code:

    import mfvan

    for event in mfvan.subscribe("ipc:///tmp/mfvan-run/events.ipc", stream="cam1"):
        print(event.stream, event.label, event.probs)

Everything else lives in the sub-packages: `mfvan.model`, `mfvan.kernels`,
`mfvan.stream`, `mfvan.deploy`.

This file is installed as `mfvan/__init__.py` (pyproject.toml maps the `mfvan` package to
this folder, since the repository's top level holds only the four sub-packages). It
imports nothing until asked: `import mfvan.kernels` must not pull in ZeroMQ.
"""

__all__ = ["Event", "Subscription", "subscribe", "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from mfvan.deploy.cli import version

        return version()
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("mfvan.stream.client"), name)
    raise AttributeError(f"module 'mfvan' has no attribute {name!r}")
