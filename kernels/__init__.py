"""mfvan.kernels: Numba kernels (dense optical flow, spotting signals), face tracking, and
the online spotter; `facespot.FaceSpotter` is the one path frame -> crop -> spots that the
live stage, `mfvan spot-eval` and `mfvan bench spotter` share.

Compiled kernels are cached on disk (`cache=True`), so only a first start compiles them
(about 20 s of one core; `mfvan warm-up` does it ahead). Numba caches next to the sources
when it may write there; an install it may not write to (a read-only site-packages, a
container image) caches in a per-user folder instead, chosen here before Numba loads
(`cache_dir`): `$NUMBA_CACHE_DIR` if set, else `$XDG_CACHE_HOME/mfvan/numba` (default
`~/.cache/mfvan/numba`), else a folder of this user's under the temporary directory. Without
one, Numba would refuse to load the kernels at all.

Imports nothing of this project (tests/test_layout.py checks it).
"""

from __future__ import annotations

import os
import tempfile


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def cache_dir(package: str, environ=os.environ, writable=_writable) -> str | None:
    """Where Numba should cache the kernels of `package` (a folder), or None where Numba's
    own choice is right (`NUMBA_CACHE_DIR` is set, or the package's folder is writable).
    `writable(path)`: whether this process may write there."""
    if environ.get("NUMBA_CACHE_DIR") or writable(package):
        return None
    home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    fallback = os.path.join(tempfile.gettempdir(), f"mfvan-{os.getuid()}")
    for base in (os.path.join(home, "mfvan"), fallback):
        path = os.path.join(base, "numba")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if writable(path):
            return path
    return None


_CACHE = cache_dir(os.path.dirname(os.path.abspath(__file__)))
if _CACHE is not None:
    os.environ["NUMBA_CACHE_DIR"] = _CACHE
