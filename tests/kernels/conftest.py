"""What the kernels' tests share: a SynthME face crop."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def face():
    """A 128 px grey face crop from SynthME (textured like the crops the spotter sees)."""
    from mfvan.deploy.bench.flow import synth_flow_pairs

    return synth_flow_pairs(1, 128)[0][0].astype(np.float32)
