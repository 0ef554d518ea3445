"""mfvan.deploy: running mfvan, one sub-package per job: the `mfvan` command (`cli.py`, the
table, and `commands/`, one module per command), the run-time (`runtime/`: what the stage
processes share, `mfvan run`'s supervisor, flags from files, the `synth://` camera, the
offline `analyze`), inference (`inference/`: backends, export), the benchmarks (`bench/`),
the web view (`web/`), the shipped weights (`shipped.py`, `weights/`) and the operations
files (`ops/`: prometheus, grafana, k8s, systemd, compose, the example TOML).

The top of the dependency graph: may import mfvan.stream, mfvan.model and mfvan.kernels.
"""
