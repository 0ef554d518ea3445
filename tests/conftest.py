import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """A tiny SynthME set written by the CLI, as a user would: seed 0, with previews."""
    from mfvan.deploy.cli import main

    out = tmp_path_factory.mktemp("synthme") / "tiny"
    assert (
        main(["synth", "--config", "tiny", "--out", str(out), "--preview", "--workers", "2"]) == 0
    )
    return out
