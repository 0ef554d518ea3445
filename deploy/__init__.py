"""mfvan.deploy: running mfvan (the `mfvan` CLI, inference backends, export, launcher).

The top of the dependency graph: may import mfvan.stream, mfvan.model and mfvan.kernels.
"""
