"""A RUN_DIR's layout, and reading it without training: the names timnet gives its files, its
identity, the features it was trained on, its fold folders and their results (and how every
command words folds unfinished, diverged or without weights), and the folders of a multi-seed
run. Evaluation, prediction and reports need these; training (run.py) writes what they read.
Importing it imports neither numpy nor torch (fingerprinting features and reading a run's
training options do, where they are called)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TimnetError

if TYPE_CHECKING:  # importing numpy here would make `timnet --help` pay for it (the CLI reads run folders)
    from .features import FeatureSet

RUN_FILE = "run.json"  # a run's identity (timnet.run): what marks a folder as a RUN_DIR
# What timnet writes in a RUN_DIR besides run.json and fold_NN/, for any kind of run (folds,
# --all-data, --seeds, plot): --overwrite deletes all of them, so that nothing of the old run is
# left to be read as the new one's (an old all-data model.pt beside new folds would be predicted with).
RUN_OUTPUTS = ("results.json", "results.csv", "validation.json", "report.html", "plots", "model.pt",
               "state*.pt", "member_*.pt", "history*.csv", "seeds.json", "seeds.csv")
DIVERGED_FILE = "diverged.json"  # a sweep trial's fold member whose loss became NaN, until its fold records it
# Every name timnet gives a file in a run, fold or sweep folder: never a user's --json, and the only
# hidden temporary files (files.atomic_write) a resume clears.
RUN_FILES = (*RUN_OUTPUTS, RUN_FILE, "result.json", "sweep.json", "trials.csv", DIVERGED_FILE)
# the figures `train` and `plot` write into a run's plots/ folder (each as .png and .svg)
FIGURE_NAMES = ("curves", "confusion", "confusion_folds", "recall", "tsne")
# Every figure plots.save_figure writes says it is timnet's (PNG tEXt Source, SVG dc:source), so a
# folder given for figures is not stripped of a user's file that bears one of their names.
FIGURE_MARKS = {"png": b"tEXtSource\0timnet", "svg": b"<dc:source>timnet</dc:source>"}


def refuse_foreign_figures(folder: Path, *, given: str) -> None:
    """Refuse a `folder` for figures that holds, under a figure's name (FIGURE_NAMES), a path that
    is not a figure timnet wrote: drawing would replace it, or delete it where that figure is skipped.
    `given` names the folder as the user gave it (`--out figs`)."""
    for name in FIGURE_NAMES:
        for fmt, mark in FIGURE_MARKS.items():
            path = Path(folder) / f"{name}.{fmt}"
            if not (path.exists() or path.is_symlink()):
                continue
            try:  # timnet writes no links: one is the user's, whatever it points to
                with open(path, "rb") as f:
                    ours = not path.is_symlink() and mark in f.read(4096)  # the mark sits in the header
            except OSError:  # a folder so named, a dangling link
                ours = False
            if not ours:
                raise TimnetError(f"{given}: {path.name} there carries no timnet mark (a file of yours, or a figure "
                                  "from a timnet before the mark: delete it then), and drawing would replace it; "
                                  "expected it moved away, or another folder for the figures")


def history_name(m: int) -> str:
    """Member m's training history in its fold folder: the first member's (the single model's) is
    history.csv, so a one-model fold and an ensemble's member 0 read alike."""
    return "history.csv" if m == 0 else f"history_member{m}.csv"

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
    import numpy as np

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(fs.x).tobytes())
    h.update(np.ascontiguousarray(fs.y).tobytes())
    return h.hexdigest()[:16]


# The identity's values that readers of run.json rely on, by type (labels: each a string too).
_IDENTITY_TYPES = {"corpus": str, "labels": list, "n_samples": int, "seed": int, "folds": int, "split": str,
                   "train_config": dict, "model_config": dict, "feature_config": dict}
_IDENTITY_TYPES_SAID = {str: "string", list: "list of class names", int: "whole number", dict: "JSON object"}


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
    for key, kind in _IDENTITY_TYPES.items():  # a value edited by hand into another type: the file's damage, said so
        value = identity.get(key)
        if key not in identity or (value is None and key == "folds"):
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or \
                (key == "labels" and not all(isinstance(name, str) for name in value)):
            raise TimnetError(f"{path}: not a readable timnet run file (identity.{key} is {json.dumps(value)[:40]}, not "
                              f"a {_IDENTITY_TYPES_SAID[kind]}); expected the run file `timnet train` writes")
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


def fold_number(name: str) -> int | None:
    """k of a fold folder's name fold_<k> as timnet writes it (fold_01), None for any other name."""
    m = re.fullmatch(r"fold_(\d+)", name)
    return int(m[1]) if m else None


def fold_dirs(run_dir: str | Path) -> list[Path]:
    """A run's fold folders, fold_01, fold_02, ... in order: only names timnet writes, so that a
    user's copy beside them (fold_01_old) is neither counted as a fold nor deleted with the run."""
    return sorted((p for p in Path(run_dir).glob("fold_*") if fold_number(p.name) is not None and p.is_dir()),
                  key=lambda p: fold_number(p.name))


def fold_files(run_dir: str | Path, name: str) -> list[Path]:
    """The file `name` (model.pt, result.json) of each fold folder that has it, in fold order; a
    fold folder past the run's own folds (a copy from another run) is refused, not ensembled or tested."""
    dirs = fold_dirs(run_dir)
    _refuse_stray_folds(Path(run_dir), dirs)
    return [d / name for d in dirs if (d / name).is_file()]


def _refuse_stray_folds(run_dir: Path, dirs: list[Path]) -> None:
    if not dirs or not (run_dir / RUN_FILE).is_file():
        return  # a folder of fold checkpoints without a run file: every fold in it is the user's choice
    try:
        folds = read_identity(run_dir).get("folds")
    except TimnetError:
        return  # the caller reads run.json itself where it needs it, and says what is wrong with it
    if isinstance(folds, int) and (stray := [d.name for d in dirs if not 1 <= fold_number(d.name) <= folds]):
        raise TimnetError(f"{run_dir}: {', '.join(stray)} {'is not a fold' if len(stray) == 1 else 'are not folds'} "
                          f"of this {folds}-fold run (its {RUN_FILE}); expected fold_01 to fold_{folds:02d} only: move "
                          f"{'it' if len(stray) == 1 else 'them'} out of the run folder")


def read_fold_result(path: str | Path) -> dict:
    """A fold's result.json, checked to hold what is read from it: a fold number and, for a tested
    fold, its WAR, UAR and confusion; for a validation-only fold, its validation WAR and UAR, or why it diverged."""
    path = Path(path)
    remedy = "delete it to train that fold again"
    try:
        r = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TimnetError(f"{path}: not a readable fold result ({e}); {remedy}") from None
    number = (int, float)
    ok = isinstance(r, dict) and isinstance(r.get("fold"), int) and (
        isinstance(r.get("war"), number) and isinstance(r.get("uar"), number) and _is_confusion(r.get("confusion"), r.get("n_test"))
        if "war" in r else isinstance(r.get("diverged"), str)  # a sweep trial's fold whose loss became NaN
        or isinstance(r.get("val_war"), number) and isinstance(r.get("val_uar"), number))
    if not ok:
        raise TimnetError(f"{path}: not a timnet fold result (a JSON object with fold, war, uar, n_test and a square "
                          f"confusion of n_test utterances, or a validation-only fold's val_war, val_uar); {remedy}")
    if (k := fold_number(path.parent.name)) is not None and r["fold"] != k:
        raise TimnetError(f"{path}: the result of fold {r['fold']}, in {path.parent.name}; expected each fold's result "
                          f"in its own folder (a copy from another fold?); {remedy}")
    return r


def _is_confusion(confusion, n_test) -> bool:
    """Whether `confusion` is a square matrix of counts of `n_test` utterances, as evaluate writes it."""
    return (isinstance(n_test, int) and isinstance(confusion, list) and len(confusion) > 0
            and all(isinstance(row, list) and len(row) == len(confusion) for row in confusion)
            and all(isinstance(c, int) and c >= 0 for row in confusion for c in row)
            and sum(map(sum, confusion)) == n_test)


def diverged_folds(run_dir: str | Path) -> list[int]:
    """The folds of a run (a sweep trial) recorded as diverged: their loss became NaN or infinite, so they
    are finished with no model (timnet.sweep)."""
    return sorted(r["fold"] for r in map(read_fold_result, fold_files(run_dir, "result.json")) if r.get("diverged"))


def diverged_words(folds: list[int]) -> str:
    """How every command names a sweep trial's diverged folds."""
    return f"fold {', '.join(map(str, folds))} diverged (the loss became NaN or infinite)"


def unfinished_words(run_dir: str | Path, n_finished: int, folds: int) -> str:
    """How a command says that only `n_finished` of a run's `folds` have a model: the folds a sweep
    trial lost to divergence named, as they will never have one."""
    results = {path.parent: read_fold_result(path) for path in fold_files(run_dir, "result.json")}
    lost = sorted(r["fold"] for r in results.values() if r.get("diverged"))
    text = f"only {n_finished} of {folds} folds " + (f"have a model ({diverged_words(lost)})" if lost else "are finished")
    # figures kept without weights (the benchmarks' ledger restores figures only; a model.pt deleted):
    # `train` counts such a fold done, so it says how to have it trained again
    bare = [d.name for d, r in results.items() if not r.get("diverged") and not (d / "model.pt").exists()]
    if bare:
        text += "; " + weightless_words(bare)
    return text


def weightless_words(folds: list[str], said: str = "") -> str:
    """How every command names finished folds kept without their model.pt (`said`: what it adds),
    with the way to have them trained again."""
    one = len(folds) == 1
    return (f"{', '.join(folds)} {'has' if one else 'have'} figures but no model.pt{said} (delete "
            f"{'its' if one else 'their'} result.json and run the same `timnet train` to train {'it' if one else 'them'} again)")
