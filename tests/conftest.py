"""The fixtures every test folder shares (helpers to import are in helpers.py)."""

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """A tiny SynthME set written by the CLI, as a user would: seed 0, with previews."""
    from mfvan.deploy.cli import main

    out = tmp_path_factory.mktemp("synthme") / "tiny"
    assert (
        main(["synth", "--config", "tiny", "--out", str(out), "--preview", "--workers", "2"]) == 0
    )
    return out


@pytest.fixture(scope="session")
def demo_weights():
    """The shipped demo weights as `load_weights` gives them, (model, meta), loaded once
    per test session. Shared: a test must not change the model (wrap it, don't train it)."""
    from mfvan.deploy.shipped import DEMO_WEIGHTS
    from mfvan.model.weights import load_weights

    return load_weights(DEMO_WEIGHTS)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB file system (tmpfs), mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)])
    if done.returncode != 0:
        pytest.skip("could not mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)
