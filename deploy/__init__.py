"""mfvan.deploy: running mfvan. The `mfvan` command (`cli.py`, the table, and `commands/`,
one module per command), what the live stage processes share (`stage.py`) and `mfvan
run`'s supervisor (`supervisor.py`), inference backends (`backends.py`), export, the
benchmarks (`bench/`), the `synth://` camera, flags from files (`config.py`), the shipped
weights (`shipped.py`, `weights/`) and the ops files (prometheus/, grafana/, k8s/,
systemd/).

The top of the dependency graph: may import mfvan.stream, mfvan.model and mfvan.kernels.
"""
