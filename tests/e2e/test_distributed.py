"""`mfvan train` under torchrun: two CPU processes (gloo) with DistributedDataParallel
train the same model as one process that cuts each batch in two and averages the
gradients (`--accumulate 2`), to within float summation order: parameters within 1e-4
after 2 epochs. (Not the same as one process with whole batches: BatchNorm normalises
each half by its own statistics either way.)"""

import os
import subprocess
import sys

import pytest
from helpers import free_port
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _train(prefix: list[str], tiny_set, out, cache, *extra) -> dict:
    argv = [
        *prefix,
        "train",
        "--dataset",
        "synthme",
        "--data",
        str(tiny_set),
        "--config",
        "tiny",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--cache",
        str(cache),
        *extra,
    ]
    # torchrun gives each process one thread; the one-process runs get the same, so that
    # every run sums its floats in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (weights,) = out.glob("*.safetensors")
    return load_file(str(weights))


def test_two_gloo_processes_train_what_one_process_accumulating_two_does(tiny_set, tmp_path):
    cache = tmp_path / "pairs"
    one = _train(
        [sys.executable, "-m", "mfvan.deploy.cli"],
        tiny_set,
        tmp_path / "one",
        cache,
        "--accumulate",
        "2",
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "mfvan.deploy.cli",
    ]
    two = _train(torchrun, tiny_set, tmp_path / "two", cache)
    assert one.keys() == two.keys()
    # BatchNorm's running statistics are rank 0's under DDP (its buffers are broadcast):
    # they are not trained, so only the parameters are compared
    params = [
        k for k in one if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    worst = max(float((one[k] - two[k]).abs().max()) for k in params)
    assert worst < 1e-4, f"largest parameter difference {worst:.2e}"
    baseline = _train(
        [sys.executable, "-m", "mfvan.deploy.cli"], tiny_set, tmp_path / "whole", cache
    )
    differs = max(float((one[k] - baseline[k]).abs().max()) for k in params)
    assert differs > 10 * worst, "the comparison can tell different trainings apart"
