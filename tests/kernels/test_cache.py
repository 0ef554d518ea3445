"""The kernels' on-disk compile cache: where it goes on a read-only install, readiness only
once compiled, and one compile shared by two processes (`mfvan warm-up`)."""

import os
import tempfile

import pytest


def test_kernels_cache_in_a_per_user_folder_when_the_install_is_read_only(tmp_path):
    """A read-only install (site-packages, a container image) must not mean compiling at
    every start: the cache goes to $XDG_CACHE_HOME/mfvan/numba, else a folder of this
    user's under the temporary directory; NUMBA_CACHE_DIR, when set, is left alone. (The
    tests run as root, for whom permission bits do not stop a write: what may be written
    is given as a predicate.)"""
    from mfvan.kernels import cache_dir

    package = str(tmp_path / "site-packages" / "mfvan" / "kernels")
    cache_home = tmp_path / "home-cache"
    env = {"XDG_CACHE_HOME": str(cache_home)}
    everywhere = lambda path: True  # noqa: E731
    assert cache_dir(package, env, everywhere) is None, "Numba caches beside the sources"
    read_only = lambda path: not path.startswith(package)  # noqa: E731
    assert cache_dir(package, env, read_only) == str(cache_home / "mfvan" / "numba")
    assert (cache_home / "mfvan" / "numba").is_dir()
    assert cache_dir(package, {**env, "NUMBA_CACHE_DIR": "/x"}, read_only) is None
    mine = os.path.join(tempfile.gettempdir(), f"mfvan-{os.getuid()}")
    only_tmp = lambda path: path.startswith(mine)  # noqa: E731
    fallback = cache_dir(package, {"XDG_CACHE_HOME": str(tmp_path / "no")}, only_tmp)
    assert fallback == os.path.join(mine, "numba")


@pytest.mark.slow
def test_ready_only_once_compiled_and_a_second_start_compiles_nothing(tmp_path):
    """A spot stage on an empty kernel cache serves /live and /metrics at once but answers
    /ready 503 (mfvan_ready 0) while it compiles, 200 after; `mfvan warm-up` then finds
    everything in the cache and compiles nothing."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from helpers import free_port

    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    port = free_port()
    spot = subprocess.Popen(
        [sys.executable, "-m", "mfvan.deploy.cli", "spot", "--in", f"ipc://{tmp_path}/f.ipc"]
        + ["--out", f"ipc://{tmp_path}/p.ipc", "--metrics-port", str(port)],
        env=env,
    )

    def status(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return None, ""

    try:
        deadline = time.monotonic() + 60
        while status("/live")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, text = status("/metrics")
        assert code == 200 and 'mfvan_ready{stage="spot"} 0.0' in text
        assert status("/ready")[0] == 503, "serving, still compiling"
        deadline = time.monotonic() + 300
        while status("/ready")[0] != 200 and time.monotonic() < deadline:
            assert spot.poll() is None, "the spot stage died while compiling"
            time.sleep(0.2)
        assert status("/ready")[0] == 200
        assert 'mfvan_ready{stage="spot"} 1.0' in status("/metrics")[1]
        assert list(cache.rglob("*.nbi")), "what it compiled is in the cache"
    finally:
        spot.terminate()
        spot.wait(timeout=30)
    out = subprocess.run(
        [sys.executable, "-m", "mfvan.deploy.cli", "warm-up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "nothing to compile" in out.stdout, out.stdout


@pytest.mark.slow
def test_warm_up_shares_a_first_compile_between_two_processes(tmp_path):
    """`mfvan warm-up --jobs 2` on an empty cache compiles the dense flow in a helper
    process and the rest in its own, and leaves nothing for a later start to compile."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def warm_up(*flags):
        out = subprocess.run(
            [sys.executable, "-m", "mfvan.deploy.cli", "warm-up", *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "compiled the spot stage's kernels in 2 processes" in warm_up("--jobs", "2")
    assert "nothing to compile" in warm_up()
