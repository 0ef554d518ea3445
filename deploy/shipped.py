"""Where the shipped files live: the SynthME-trained `demo` weights (and their sidecar).

One small module, so that the commands, the live stages and the tests name the weights
the same way without importing the experiment that trains them (`mfvan.model.reproduce`,
which is handed this path).
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "mfvan-demo-synthme.safetensors"
# The region-motion recognizer with its "none" veto class, trained on the spotter's own pairs
# of morph identities of training portraits (`mfvan heldout --train`); docs/results.md,
# "Faces it has never seen", compares it with the MFVAN weights above on held-out faces.
VETO_WEIGHTS = WEIGHTS_DIR / "region-motion-veto-synthme.safetensors"
# The live recognizer's default, chosen by spot-then-recognize on held-out identities: the
# veto recognizer beats the MFVAN weights in every held-out cell (docs/results.md).
SHIPPED_WEIGHTS = VETO_WEIGHTS
