"""Where the shipped files live: the SynthME-trained `demo` weights (and their sidecar).

One small module, so that the commands, the live stages and the tests name the weights
the same way without importing the experiment that trains them (`mfvan.model.reproduce`,
which is handed this path).
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "mfvan-demo-synthme.safetensors"
