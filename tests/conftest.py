"""The fixtures every test folder shares (helpers to import are in helpers.py)."""

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
