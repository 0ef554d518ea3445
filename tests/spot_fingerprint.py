"""A fingerprint of what the spotter gives on some videos, to show a refactor changed
nothing: every interval's fields, a hash of each pair's onset crop, apex crop and flow, a
hash of the whole signal trace, and the rejection counts, per video, as JSON (compare two
runs' files byte for byte). Not a test: run it before and after a change.

    .venv/bin/python tests/spot_fingerprint.py after.json VIDEO...

`MFVAN_MAX_FACES=4` spots with the live stage's several-face tracker instead of the one-face
one (what `mfvan spot-eval` measures). A face's id is left out, so fingerprints from before
several faces were tracked compare byte for byte.
"""

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mfvan.model.spotting import _spot_one


def _hash(a) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]


def fingerprint(path: str) -> tuple[str, list]:
    run = _spot_one(path, None, pairs=True, max_faces=int(os.environ.get("MFVAN_MAX_FACES", 1)))
    intervals = []
    for d in run.intervals:
        onset, apex, flow = d.pop("pair")
        d.pop("face", None)
        d = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in d.items()}
        intervals.append({**d, "crops": [_hash(onset), _hash(apex), _hash(flow)]})
    return path, [intervals, _hash(run.signal), run.rejected]


if __name__ == "__main__":
    out, videos = Path(sys.argv[1]), sorted(sys.argv[2:])
    with ProcessPoolExecutor(2) as pool:
        found = dict(pool.map(fingerprint, videos))
    out.write_text(json.dumps(found, indent=1, sort_keys=True, default=str))
    print(f"{len(found)} videos, {sum(len(v[0]) for v in found.values())} intervals -> {out}")
