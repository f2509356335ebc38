"""Folds as Ray tasks: the same results as the local backend, and a lost worker resumes."""
import json
import os
import subprocess
import sys

import pytest

from test_train import synthetic
from timnet.features import save_features

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")

TIMNET = [sys.executable, "-m", "timnet"]
ARGS = ["--folds", "3", "--epochs", "2", "--batch-size", "16", "--threads", "1", "--no-report", "-q"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "syn.npz"
    save_features(synthetic(), path)
    return path


def train(features, out, *extra, env=None):
    done = subprocess.run([*TIMNET, "train", str(features), "-o", str(out), *ARGS, "--json", str(out) + ".json", *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(open(str(out) + ".json").read())


def same_folds(a: dict, b: dict) -> bool:
    return [(f["fold"], f["confusion"], f["war"], f["uar"]) for f in a["folds"]] == \
           [(f["fold"], f["confusion"], f["war"], f["uar"]) for f in b["folds"]]


@pytest.mark.slow
def test_ray_equals_local_and_survives_a_killed_worker(features, tmp_path):
    """3 folds x 2 epochs on Ray, with one Ray worker killed (SIGKILL right after fold 2's epoch-1
    snapshot): Ray retries the task, which resumes, and every fold's results are identical to the
    local backend's. (One Ray run: starting a cluster is most of this test's time.)"""
    local = train(features, tmp_path / "local")
    killed = train(features, tmp_path / "killed", "--backend", "ray", "--save-every", "1",
                   env={"TIMNET_TEST_DIE_AFTER": "fold_02:1"})
    assert (tmp_path / "killed" / "fold_02" / "test_died_after_epoch_1").exists()  # the worker did die
    assert all("node_id" in f["worker"] for f in killed["folds"])  # the folds ran as Ray tasks
    assert same_folds(local, killed)


def test_ray_needs_an_address_that_answers(features, tmp_path):
    done = subprocess.run([*TIMNET, "train", str(features), "-o", str(tmp_path / "r"), *ARGS, "--backend", "ray",
                           "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip() == "timnet: error: --address 127.0.0.1:1: no Ray cluster answers there (Connection refused)"


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda"], "--device cuda with --backend ray: Ray chooses each fold's device"),
    (["--device", "cpu", "--gpus-per-fold", "1"], "--device cpu with --backend ray: Ray chooses each fold's device"),
    (["--workers", "2"], "--workers is for the local backend"),
    (["--cpus-per-fold", "nan"], "--cpus-per-fold nan invalid; expected a finite positive number"),
    (["--gpus-per-fold", "inf"], "--gpus-per-fold inf invalid; expected a finite number, 0 or more"),
])
def test_ray_refuses_local_only_options(features, tmp_path, extra, message):
    done = subprocess.run([*TIMNET, "train", str(features), "-o", str(tmp_path / "r"), *ARGS, "--backend", "ray",
                           *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_folds_own_error_on_ray_is_said_as_locally():
    """A task that raised (a NaN loss, a full disk) is said in its own words, not as Ray's coloured
    wrapper with "run the same command again", which would fail the same way; a lost worker is."""
    from ray.exceptions import RayTaskError, WorkerCrashedError

    from timnet.backends import _ray_failure
    from timnet.errors import TimnetError

    nan = TimnetError("r/fold_01: the loss is nan at epoch 2; lower --lr")
    assert str(_ray_failure(RayTaskError("_ray_task", "Traceback ...", nan), "1")) == str(nan)
    full = OSError(28, "No space left on device")
    assert str(_ray_failure(RayTaskError("_ray_task", "Traceback ...", full), "1")) == "fold 1: [Errno 28] No space left on device"
    lost = str(_ray_failure(WorkerCrashedError(), "2"))
    assert lost.startswith("fold 2 failed on Ray (WorkerCrashedError: ") and lost.endswith("run the same command again to resume")
    assert "\x1b" not in lost
