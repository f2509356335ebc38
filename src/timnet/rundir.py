"""Reading a RUN_DIR without training: its identity, the features it was trained on, and the
folders of a multi-seed run. Evaluation, prediction and reports need these; training (run.py)
writes what they read. Importing it imports no torch (reading a run's training options does)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import TimnetError
from .features import FeatureSet
from .utils import RUN_FILE

# Identity keys added after a run format was first written, with the value older runs implied.
LEGACY_IDENTITY = {"device": "cpu", "path": "reference", "evaluate_test": True, "val_split": "stratified"}

# Options saved with a run that change none of its figures: a run resumes whatever they are now.
NOT_DECISIVE = (
    "save_every",  # snapshots resume bit for bit at any interval
    "recipe",  # the preset's name only: the values it set are compared one by one
)


def decisive(identity: dict | None) -> dict | None:
    """A run identity without the options in NOT_DECISIVE, nor those its own config makes inert (a
    --time-mask-width without --time-masks), as runs are compared: a run resumes whatever they are now."""
    if identity is None or "train_config" not in identity:
        return identity
    tc = identity["train_config"]
    dropped = {*NOT_DECISIVE, *_inert(tc)}
    return {**identity, "train_config": {k: v for k, v in tc.items() if k not in dropped}}


def _inert(train_config: dict) -> dict[str, str]:
    from .train import TrainConfig  # here only: it imports torch

    try:
        return TrainConfig(**train_config).inert()
    except (TypeError, ValueError, TimnetError):  # a config of another version: every option compared
        return {}


def features_fingerprint(fs: FeatureSet) -> str:
    """A short hash of the features and labels, so a RUN_DIR is never resumed on other data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(fs.x).tobytes())
    h.update(np.ascontiguousarray(fs.y).tobytes())
    return h.hexdigest()[:16]


def read_identity(run_dir: str | Path) -> dict:
    """The identity (configs, data fingerprint, seed, split) recorded in a RUN_DIR's run.json."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise TimnetError(f"{path}: missing; expected the run file `timnet train` writes in every RUN_DIR (it records "
                          "the features the folds were made on)")
    try:
        identity = {**LEGACY_IDENTITY, **json.loads(path.read_text())["identity"]}
    except OSError as e:
        raise TimnetError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON, or bytes that are not UTF-8
        why = {"KeyError": "no identity in it", "TypeError": "not a JSON object"}.get(type(e).__name__, "not JSON")
        raise TimnetError(f"{path}: not a readable timnet run file ({why}); expected the JSON object with an "
                          "identity that `timnet train` writes") from None
    if isinstance(identity.get("train_config"), dict):
        from .train import TrainConfig  # here only: it imports torch, which reading a run needs nowhere else

        # options added since the run was written default to what older versions did (the paper)
        identity["train_config"] = {**asdict(TrainConfig()), **identity["train_config"]}
    return identity


def recorded(run_dir: str | Path, *keys: str):
    """A value run.json keeps beside the identity, at run.json[keys[0]][keys[1]]...; None where the
    version that began the run did not record it (or run.json cannot be read)."""
    try:
        value = json.loads((Path(run_dir) / RUN_FILE).read_text())
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value


def recorded_cpu_dispatch(run_dir: str | Path) -> dict:
    """What decided the bits of the process that began the run in `run_dir` (run.json:
    versions.cpu_dispatch, timnet.dispatch.state: numpy's loops, MKL's branch, the CPU's vendor);
    {} where that is not recorded (runs from before it was), and a key missing where that was not."""
    record = recorded(run_dir, "versions", "cpu_dispatch")
    return record if isinstance(record, dict) else {}


def check_not_multi_seed(path: Path, *, hint: str | None = None) -> None:
    """A `train --seeds` folder holds one RUN_DIR per seed: say so, rather than that it is no run."""
    seeds = sorted(p.name for p in Path(path).glob("seed_*") if (p / RUN_FILE).is_file())
    if seeds and not (Path(path) / RUN_FILE).is_file():
        raise TimnetError(f"{path} holds the runs of {len(seeds)} seeds ({', '.join(seeds)}); "
                          + (hint or f"expected one of them, e.g. {Path(path) / seeds[0]}"))


def check_not_all_data(run_dir: str | Path) -> None:
    """An `--all-data` run holds one model trained on every sample: say that it has no folds to test
    or plot, rather than that none is finished."""
    try:
        all_data = read_identity(run_dir).get("all_data")
    except TimnetError:
        return  # not readable as a run: the caller's own error says what is wrong
    if all_data:
        use = (f"predict with it (timnet predict --model {run_dir})" if (Path(run_dir) / "model.pt").is_file()
               else "its `timnet train ... --all-data` resumes it, to predict with")
        raise TimnetError(f"{run_dir}: a model trained on every sample (--all-data) has no test folds; {use}; "
                          "a recipe's test figures come from a cross-validated RUN_DIR")
