"""A cross-validated training run in a RUN_DIR: folds, resume, checkpoints, results.

RUN_DIR/
  run.json               configs, features fingerprint, command, package versions
  fold_01/state.pt       resumable snapshot (removed when the fold is done; with --members K also
                         state_member<m>.pt, and member_<m>.pt for each member already finished)
  fold_01/model.pt       the fold's chosen model: a checkpoint that predicts on its own
  fold_01/history.csv    per-epoch train loss/accuracy (and validation loss/WAR/UAR)
  fold_01/history_member1.csv ...  the other members' histories (--members > 1)
  fold_01/result.json    the fold's test result; its presence marks the fold as done
  results.json, results.csv   the summary (INTERFACE.md), written when every fold is done
                         (validation.json instead for a validation-only run: recipe selection)

With --seeds, RUN_DIR holds one such folder per seed, seed_<s>/, beside seeds.json and seeds.csv
(their spread). With --all-data, OUT_DIR holds run.json, model.pt and history*.csv (and the
snapshots while training): one model, no folds, no test score.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import platform
import sys
import time
import warnings
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import dispatch, recipe
from .checkpoint import save_checkpoint
from .corpora import paper_dilations, paper_seed
from .errors import ConfigurationChanged, Diverged, TimnetError
from .evaluate import fold_result, predict_proba, summarize
from .features import FeatureSet
from .files import in_use, temporary_target, write_csv, write_json
from .folds import make_folds
from .model import TIMNetConfig, ensemble
from .processes import torch_threads
from .progress import FoldProgress, progress_bar
from .rundir import (DIVERGED_FILE, FIGURE_NAMES, LEGACY_IDENTITY, RUN_FILE, RUN_FILES, RUN_OUTPUTS, check_not_multi_seed, decisive,
                     features_fingerprint, fold_dirs, fold_number, history_name, read_fold_result, read_identity, recorded,
                     recorded_cpu_dispatch)
from .train import (TrainConfig, check_seed, distinct, evaluate_split, fold_seed, member_done_path, resolve_path,
                    snapshot_path, train_member, train_members, validation_split)


def versions() -> dict:
    """Versions of what decides the numbers: Python, torch, numpy, librosa, and the machine."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "threads": torch.get_num_threads(),
           "cpu_dispatch": dispatch.state()}
    for pkg in ("timnet", "torch", "numpy", "scipy", "librosa", "soxr", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _remove_run_outputs(run_dir: Path, *, folds: int | None = None) -> None:
    """Delete what a run wrote in run_dir (--overwrite), file by file: a user's notes in a fold
    folder or a figure of theirs in plots/ stay, and so do the folders that hold them. A fold
    folder the new `folds`-fold run will not have, kept for such a file, would make the finished
    run unreadable (not a fold of it): refused before anything is deleted."""
    beyond = [fold for fold in fold_dirs(run_dir) if isinstance(folds, int) and fold_number(fold.name) > folds]
    for fold in beyond:  # timnet's own in it: its files and a killed write's hidden temporaries
        theirs = [p.name for p in sorted(fold.iterdir())
                  if not (_matches(p, RUN_FILES) or p.name.startswith(".") and p.name.endswith(".tmp"))]
        if theirs:
            raise TimnetError(f"{fold} holds {theirs[0]}, not timnet's, and the new {folds}-fold run has no "
                              f"{fold.name}; expected it moved out of {run_dir} before --overwrite")
    for seeds_run in [p for p in run_dir.glob("seed_*") if (p / RUN_FILE).is_file()]:
        _remove_run_outputs(seeds_run)
        _remove_if_empty(seeds_run)
    for fold in fold_dirs(run_dir):
        _remove_named(fold, RUN_FILES)
    _remove_named(run_dir / "plots", [f"{name}.{fmt}" for name in FIGURE_NAMES for fmt in ("png", "svg")])
    _remove_named(run_dir, (*RUN_OUTPUTS, RUN_FILE))
    _remove_stale_temporaries(run_dir)
    for folder in [*fold_dirs(run_dir), run_dir / "plots"]:
        _remove_if_empty(folder)


def remove_run(run_dir: Path) -> None:
    """Delete what a run wrote in run_dir, and the folder too unless a file of the user's is left in it."""
    _remove_run_outputs(run_dir)
    _remove_if_empty(run_dir)


def _matches(path: Path, patterns) -> bool:
    """A file (not a folder) whose name matches one of `patterns`."""
    return path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)


def _remove_named(folder: Path, patterns) -> None:
    """Delete the files of `folder` whose names match one of `patterns` (not folders: plots/ is handled apart)."""
    for child in folder.glob("*") if folder.is_dir() else []:
        if _matches(child, patterns):
            child.unlink()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # missing, or holding a file that is not ours
        folder.rmdir()


def _remove_stale_temporaries(run_dir: Path) -> None:
    """The hidden temporary files (files.atomic_write) a run killed while writing leaves behind;
    another program's hidden files in the folder stay, and so does a temporary whose writer is alive
    (a `timnet plot` drawing this run's figures while it resumes holds its temporary's lock)."""
    for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("fold_*/.*.tmp")]:
        target = temporary_target(stale.name)
        if target and any(fnmatch.fnmatch(target, name) for name in RUN_FILES) and not in_use(stale):
            stale.unlink(missing_ok=True)
    for stale in run_dir.glob("plots/.*.tmp"):  # `timnet plot` killed while writing a figure
        if (temporary_target(stale.name) or "").endswith((".png", ".svg")) and not in_use(stale):
            stale.unlink(missing_ok=True)


def _in_run_threads(method):
    """A Run method run with the run's torch threads (its figures were measured so: evaluation
    included), the caller's count restored after."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with torch_threads(self.threads):
            return method(self, *args, **kwargs)
    return wrapped


def _changed(was: dict, now: dict) -> list[str]:
    """The identity entries that differ, a config's own options by name (`train_config.epochs`)."""
    diff, absent = [], object()  # absent differs from any value, None included
    for key in sorted(set(was) | set(now)):
        old, new = was.get(key, absent), now.get(key, absent)
        if isinstance(old, dict) and isinstance(new, dict):
            diff += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k, absent) != new.get(k, absent)]
        elif old != new:
            diff.append(key)
    return diff


def changed(was: dict, now: dict) -> list[str]:
    """What differs between two run identities as runs are compared (decisive options only), a
    config's options by name; an option equal in both that only one config makes inert
    (--plain-members 0 beside --members 1 and 4) is not what changed."""
    diff = _changed(decisive(was), decisive(now))
    old, new, absent = was.get("train_config") or {}, now.get("train_config") or {}, object()
    options = {d: d.removeprefix("train_config.") for d in diff if d.startswith("train_config.")}
    return [d for d in diff if d not in options or old.get(options[d], absent) != new.get(options[d], absent)] or diff


def prepare_run_dir(run_dir: Path, identity: dict, *, overwrite: bool, extra: dict | None = None) -> bool:
    """Create or check a run folder for `identity`; True when it already holds this run (resume).

    A folder holding another configuration, or files that are not a run, is refused unless
    `overwrite`, which deletes the old run's folds and `results` files first.
    """
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        try:
            previous = read_identity(run_dir)
            # legacy defaults only stand in for keys this kind of run has (all-data runs have fewer)
            previous = {k: v for k, v in previous.items() if k in identity or k not in LEGACY_IDENTITY}
        except TimnetError as e:
            previous, unreadable = None, str(e)
        if decisive(previous) == decisive(identity):
            _remove_stale_temporaries(run_dir)
            return True
        if not overwrite:
            if previous is None:  # not a configuration change: nothing says what the run was
                raise TimnetError(f"{unreadable}; use another RUN_DIR or --overwrite (which deletes the run in it)")
            diff = changed(previous, identity)
            hint = ""
            if diff in (["threads_per_fold"], ["path"]):
                option = diff[0].replace("_per_fold", "")
                hint = f"; to resume it pass --{option} {previous[diff[0]]}"
            elif set(diff) <= {f"train_config.{k}" for preset in recipe.RECIPES.values() for k in preset}:
                # a run of an earlier preset (`strong` had one member, then two, then four without
                # mixup) resumes with the values that preset set given explicitly
                tc = previous["train_config"]
                hint = "; to resume it pass " + " ".join(
                    f"--{k.replace('_', '-')} {tc[k]}" for k in (d.split(".", 1)[1] for d in diff))
            elif "features_fingerprint" in diff:
                hint = ("; if these are the same features, the run's command (run.json) may have another --order, or, "
                        "if the same audio extracted elsewhere, the CPU loops numpy and OpenBLAS ran may differ from "
                        "the run's (README: the same bits on every machine; run.json: versions.cpu_dispatch)")
            raise ConfigurationChanged(f"{run_dir} holds a run with a different configuration ({', '.join(diff)}); "
                                       f"use another RUN_DIR or --overwrite (which deletes it){hint}", diff, hint)
        _remove_run_outputs(run_dir, folds=identity.get("folds"))
    elif run_dir.exists() and any(run_dir.iterdir()):
        _check_not_sweep(run_dir)
        if not overwrite:
            check_not_multi_seed(run_dir, hint="use another RUN_DIR or --overwrite (which deletes them)")
            raise TimnetError(f"{run_dir} exists and is not a timnet RUN_DIR; expected an empty or new folder (or --overwrite)")
        if fold_dirs(run_dir) or any((p / RUN_FILE).is_file() for p in run_dir.glob("seed_*")):
            # a run that lost its run.json (its folds would count as done), or a --seeds folder
            # overwritten with one seed: timnet's own folders and outputs go; other files are the user's
            _remove_run_outputs(run_dir, folds=identity.get("folds"))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"identity": identity, "command": sys.argv, **(extra or {}), "versions": versions(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return False


def model_config_for(fs: FeatureSet) -> TIMNetConfig:
    """The paper's network for a feature set: the corpus's dilation levels, its class count."""
    levels = paper_dilations(fs.corpus)
    return TIMNetConfig(n_features=fs.x.shape[2], dilations=levels, n_classes=len(fs.labels))


def _write_histories(folder: Path, members) -> None:
    """history.csv of the first member (the single model's), history_member<m>.csv of the others."""
    for m, member in enumerate(members):
        write_csv(folder / history_name(m), member.history)


def _partial(folder: Path) -> list[Path]:
    """Snapshots and finished members of a training not yet complete."""
    return [*folder.glob("state*.pt"), *folder.glob("member_*.pt")]


def dispatch_change(run_dir: Path, config: TrainConfig, todo=None, folders=()) -> str | None:
    """Why members `todo` (default: all) of a resumed run will not train as what trained before them did, or None.

    Two things a machine decides change the bits of training (timnet.dispatch): torch's MKL picks
    its kernels by the CPU's vendor and its branch (MKL_CBWR; an Intel Xeon with AVX-512 took another
    path than an AMD EPYC and an AVX2 machine, which agreed), for every member; and VTLP's mel band centres
    come from librosa through numpy's exp, whose AVX-512 loops round a few of them 1 ulp apart from
    the AVX2 ones (an EMODB fold's validation UAR 0.8377 against 0.8496), for members with VTLP
    alone. Compared with the process that created run.json and with every process that trained the
    snapshots of members `todo` in `folders` (the unfinished folds); what was not recorded (older
    versions) is not compared."""
    members = range(config.members) if todo is None else todo
    if not members:
        return None
    now = dispatch.state()
    before = [("its run began", recorded_cpu_dispatch(run_dir), members)]
    for folder in folders:
        for m in members:
            if (snapshot := snapshot_path(folder, m)).is_file():  # member m's unfinished training
                before += [("an unfinished fold trained", r, [m]) for r in _snapshot_machines(snapshot)]
    why = []
    for when, was, these in before:
        if mkl := dispatch.mkl_change(was, now):
            why.append(f"{when} on {mkl}, and torch's MKL chooses its kernels by them")
        if any(config.for_member(m).vtlp for m in these) and was.get("numpy_avx512") not in (None, now["numpy_avx512"]):
            how = (f"{dispatch.OPT_OUT}=1 on an AVX-512 machine" if was["numpy_avx512"]
                   else "the `timnet` command, or timnet.dispatch.pin() before numpy is imported")
            why.append(f"{when} with numpy's AVX-512 loops {'on' if was['numpy_avx512'] else 'off'}, this process "
                       f"has them {'on' if now['numpy_avx512'] else 'off'}; --vtlp rounds apart under them (to resume "
                       f"alike: {how})")
    if not why:
        return None
    return f"{run_dir}: {'; '.join(distinct(why))}; so what trains from here on is not what an uninterrupted run gives"


def _snapshot_machines(path: Path) -> list[dict]:
    """The processes that trained a snapshot (FoldState.machines); [] where older versions recorded
    none or the file cannot be read (the resume itself then says why)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("cpu_dispatch", [])
    except Exception:
        return []


def _clear_partial(folder: Path) -> None:
    for path in [*_partial(folder), folder / DIVERGED_FILE]:
        path.unlink(missing_ok=True)


def _seed_and_model(fs: FeatureSet, config: TrainConfig, seed: int | None, model_overrides: dict | None):
    """(the run's seed: the corpus's paper seed by default, the network config) after checking the
    training config fits these features."""
    config.check_fits(*fs.x.shape[1:])
    seed = check_seed(paper_seed(fs.corpus, seed))
    return seed, replace(model_config_for(fs), **(model_overrides or {}))


def _identity(fs: FeatureSet, *, config: TrainConfig, model_config, seed: int, threads: int, device: str, path: str) -> dict:
    """What a run's results depend on, saved as run.json: a resume must match it exactly."""
    return {
        "corpus": fs.corpus, "labels": list(fs.labels), "n_samples": len(fs),
        "features_fingerprint": features_fingerprint(fs), "seed": seed,
        "train_config": asdict(config), "model_config": asdict(model_config), "feature_config": asdict(fs.config),
        # float results depend on the thread count of the reductions, so it is part of the run
        "threads_per_fold": threads,
        "device": torch.device(device).type,
        # the fast path computes the same mathematics in another order: last float bits differ
        "path": resolve_path(path, device),
    }


class _Abandoned(Exception):
    """A member stopped because another member of its sweep trial's fold diverged."""


class Run:
    """One cross-validated training run; `execute` trains (or resumes) every fold."""

    def __init__(self, fs: FeatureSet, run_dir: str | Path, *, config: TrainConfig, folds: int = 10,
                 seed: int | None = None, split: str = "random", threads: int = 1, device: str = "cpu",
                 path: str = "auto", features_path: str | None = None, model_overrides: dict | None = None,
                 evaluate_test: bool = True):
        self.fs, self.dir, self.config = fs, Path(run_dir), config
        self.folds_n, self.split = folds, split
        self.seed, self.model_config = _seed_and_model(fs, config, seed, model_overrides)
        if not evaluate_test and config.val_fraction == 0:
            raise TimnetError("a validation-only run needs validation data; give --val-fraction (e.g. 0.2)")
        self.evaluate_test = evaluate_test
        self.splits = make_folds(len(fs), folds=folds, seed=self.seed, split=split, speakers=fs.speakers, source=fs.path)
        self.identity = {
            **_identity(fs, config=config, model_config=self.model_config, seed=self.seed, threads=threads,
                        device=device, path=path),
            "folds": folds, "split": split,
            # False for the trials of a sweep: folds are scored on validation data only
            "evaluate_test": evaluate_test,
            # speaker folds validate on held-out speakers too (selection scored as the test will be)
            "val_split": "speaker" if split == "speaker" and config.val_fraction > 0 else "stratified",
        }
        self.threads, self.device, self.path = threads, device, self.identity["path"]
        self.features_path = features_path

    # -- the RUN_DIR ---------------------------------------------------------------------------
    def prepare(self, *, overwrite: bool = False) -> bool:
        """Create or check RUN_DIR; returns True when resuming. A different config is refused, and so
        are folds made otherwise than the run's first ones were."""
        parts = [self.validation_split(k) for k in range(1, self.folds_n + 1)]  # a fold that cannot be split fails here
        digest = self.splits_digest(parts)
        extra = {"features": self.features_path, "splits": digest}
        resumed = prepare_run_dir(self.dir, self.identity, overwrite=overwrite, extra=extra)
        self._warn_untaught_classes([tr for tr, _ in parts])
        self._warn_speaker_validation_share(parts)
        was = recorded(self.dir, "splits") if resumed else None
        if was is not None and was != digest and overwrite:  # the same options, other folds: a new run
            _remove_run_outputs(self.dir, folds=self.folds_n)
            return prepare_run_dir(self.dir, self.identity, overwrite=overwrite, extra=extra)
        if was is not None and was != digest:
            # the same features (x, y) with other speaker ids (`--speaker-pattern`), or a library
            # that deals folds otherwise: the folds left would not complete the finished ones' split
            raise TimnetError(f"{self.dir}: these features give other folds than the run's began with (other speaker "
                              "ids, or another version of the library that makes folds); its finished folds and "
                              "these would not be one split: resume it with the features and versions it began "
                              "with (run.json), or use another RUN_DIR or --overwrite")
        return resumed

    def _warn_speaker_validation_share(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Speaker folds validate on whole speakers, so the share held out is a count of speakers, not
        --val-fraction: with few of them (CASIA's 3 training speakers) it can be far from the share
        asked, which the user should hear before training on less data than they meant to."""
        if self.identity["val_split"] != "speaker":
            return
        fraction = self.config.val_fraction
        shares = [len(va) / (len(tr) + len(va)) for tr, va in parts]
        if 2 / 3 <= np.mean(shares) / fraction <= 1.5:
            return
        counts = sorted({(len(np.unique(self.fs.speakers[va])), len(np.unique(self.fs.speakers[np.concatenate([tr, va])])))
                         for tr, va in parts})
        held = ", ".join(f"{n} of {m}" for n, m in counts)
        warnings.warn(f"{self.dir}: validation holds whole speakers ({held} training speakers per fold), "
                      f"{np.mean(shares):.0%} of each training part on average where --val-fraction {fraction} asks "
                      f"{fraction:.0%}: a fold has too few speakers to come closer", stacklevel=3)

    def _warn_untaught_classes(self, training_parts: list[np.ndarray]) -> None:
        """Say which folds train on no utterance of a class the corpus holds (a class of few speakers in
        a speaker split, of one or two files in any): their models cannot predict it, so its recall
        in those folds is 0 by construction, which a mean UAR would not tell."""
        present = np.unique(self.fs.y)
        lacking = []
        for k, tr in enumerate(training_parts, start=1):
            if len(absent := np.setdiff1d(present, self.fs.y[tr])):
                lacking.append(f"fold {k}: " + ", ".join(self.fs.labels[c] for c in absent))
        if lacking:
            more = f" and {len(lacking) - 3} more folds" if len(lacking) > 3 else ""
            warnings.warn(f"{self.dir}: a class with no utterance to train on ({'; '.join(lacking[:3])}{more}): those folds' "
                          "models cannot predict it, so its recall there is 0 by construction (fewer --folds, or more "
                          "speakers or files of the class)", stacklevel=3)

    def splits_digest(self, parts: list[tuple[np.ndarray, np.ndarray]] | None = None) -> str:
        """A digest of every fold's training, validation and test indices (each fold's training part
        split now, unless given as `parts`: a fold that cannot be split fails before --overwrite deletes)."""
        if parts is None:
            parts = [self.validation_split(k) for k in range(1, self.folds_n + 1)]
        h = hashlib.sha256()
        for k, (tr, va) in enumerate(parts, start=1):
            for idx in (tr, va, self.splits[k - 1][1]):
                h.update(np.asarray(idx, dtype=np.int64).tobytes() + b"|")
        return h.hexdigest()[:16]

    def validation_split(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold k's (train, validation) indices: its training part, less the validation share."""
        try:
            return validation_split(self.splits[k - 1][0], self.fs.y, fraction=self.config.val_fraction, seed=fold_seed(self.seed, k),
                                    groups=self.fs.speakers if self.identity["val_split"] == "speaker" else None,
                                    labels=self.fs.labels)
        except TimnetError as e:
            raise TimnetError(f"fold {k}: {e}") from None

    def fold_dir(self, k: int) -> Path:
        return self.dir / f"fold_{k:02d}"

    # -- training ------------------------------------------------------------------------------
    def _fold_data(self, k: int):
        """Fold k's folder (created), features, labels and (train, validation) indices."""
        fdir = self.fold_dir(k)
        fdir.mkdir(parents=True, exist_ok=True)
        tr, va = self.validation_split(k)
        with warnings.catch_warnings():
            # Ray hands workers a read-only view of its shared copy; it is only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(self.fs.x))
        return fdir, x, torch.from_numpy(self.fs.y), tr, va

    @_in_run_threads
    def train_member(self, k: int, m: int, *, on_epoch: Callable[[dict], None] | None = None) -> None:
        """Train (or resume) member m of fold k alone, kept in the fold's member_<m>.pt: members of one
        fold can then train in parallel, and train_and_test_fold finds them finished."""
        fdir, x, y, tr, va = self._fold_data(k)
        trial = not self.evaluate_test  # a sweep trial's fold is lost once one member diverged: the others stop
        marker = fdir / DIVERGED_FILE
        if trial and marker.is_file():
            return

        def watch(row: dict) -> None:
            if marker.is_file():
                raise _Abandoned
            if on_epoch is not None:
                on_epoch(row)

        try:
            train_member(m, x, y, tr, va, model_config=self.model_config, config=self.config, seed=fold_seed(self.seed, k),
                         folder=fdir, on_epoch=watch if trial else on_epoch, device=self.device, path=self.path)
        except Diverged as e:
            if not trial:  # a tested run's fold has no other configuration to fall back on
                raise
            write_json(marker, {"member": m, "message": str(e)})  # train_and_test_fold records it for the fold
        except _Abandoned:
            pass

    def members_done(self, k: int) -> set[int]:
        """The members of fold k already trained and kept (an ensemble's fold only)."""
        n = self.config.members
        return {m for m in range(n) if n > 1 and member_done_path(self.fold_dir(k), m, n).is_file()}

    @_in_run_threads
    def train_and_test_fold(self, k: int, *, on_epoch: Callable[[dict], None] | None = None,
                            worker: dict | None = None) -> dict:
        """Train (or resume) fold k, evaluate its chosen model once on its test split (on its validation
        share instead in a validation-only run), save everything.

        `worker` (where the fold ran) is recorded in the fold's result."""
        test_idx = self.splits[k - 1][1]
        fdir, x, y, tr, va = self._fold_data(k)
        try:
            if not self.evaluate_test and (fdir / DIVERGED_FILE).is_file():  # a member trained in another worker
                raise Diverged(json.loads((fdir / DIVERGED_FILE).read_text())["message"])
            model, members = train_members(x, y, tr, va, model_config=self.model_config, config=self.config,
                                           seed=fold_seed(self.seed, k), folder=fdir, on_epoch=on_epoch,
                                           device=self.device, path=self.path)
        except Diverged as e:
            if self.evaluate_test:  # a tested run's fold has no other configuration to fall back on
                raise
            # A trial whose learning rate is too high for the data: recorded as done, so that a
            # resumed sweep does not train it again, and left out of the sweep's choices.
            result = {"fold": k, "diverged": str(e), "val_war": None, "val_uar": None, "n_val": len(va)}
            write_json(fdir / "result.json", result)
            _clear_partial(fdir)
            return result
        t0 = time.perf_counter()
        first = members[0]
        if self.evaluate_test:
            # The test split is touched here, once, after the model has been chosen. Every other
            # figure below is reported beside the fold's, never used to choose.
            def score(net) -> dict:
                return fold_result(k, self.fs, test_idx, predict_proba(net, self.fs.x[test_idx])[0].argmax(1))
            result, pre = score(model), ""
        else:
            def score(net) -> dict:
                return evaluate_split(net, x[va], y[va], n_classes=len(self.fs.labels))
            v = score(model)
            result, pre = {"fold": k, "val_war": v["war"], "val_uar": v["uar"], "val_loss": v["loss"], "n_val": len(va)}, "val_"

        def figures(net) -> dict:
            r = score(net)
            return {pre + "war": r["war"], pre + "uar": r["uar"]}

        averaged = first.last is not first.model  # SWA/EMA: the same training's last weights differ
        if len(members) > 1:
            if self.evaluate_test:  # each member alone
                result["members"] = [figures(m.model) for m in members]
            else:  # the first member alone is the single-model recipe: a paired comparison for free
                result.update({f"{key}_single": v for key, v in figures(first.model).items()})
                if averaged:  # and its last weights (with nothing else overridden, the paper's recipe)
                    result.update({f"{key}_single_last": v for key, v in figures(first.last).items()})
        if len(members) > 2:
            # the ensembles of the first j members (2 <= j < K), averaged as the fold's model is: what
            # fewer members would have scored, paired with this fold (member m's seed does not depend on K)
            result[pre + "first_members"] = [{"members": j, **figures(ensemble([m.model for m in members[:j]]))}
                                             for j in range(2, len(members))]
        if averaged and all(m.last is not m.model for m in members):
            # the ensemble of every member's last weights: what the averaging alone changed (not where
            # a member kept its final weights alone, as a benchmark's member taken from another run)
            last = figures(ensemble([m.last for m in members]))
            result.update({"last_weights": last} if self.evaluate_test else {f"{key}_last": v for key, v in last.items()})
        result.update(epoch=first.epoch, epochs_run=first.epochs_run, stopped_early=first.stopped_early,
                      # training seconds summed over the members, wherever each trained (members of one
                      # fold may train at once in other workers), and this evaluation
                      seconds=round(sum(m.seconds for m in members) + time.perf_counter() - t0, 2),
                      **({"member_seconds": [m.seconds for m in members]} if len(members) > 1 else {}),
                      # the fold's epoch figures above are its first member's; each stops early on its own
                      **({"member_epochs": [{"epoch": m.epoch, "epochs_run": m.epochs_run, "stopped_early": m.stopped_early}
                                            for m in members]} if len(members) > 1 else {}),
                      # members trained in another run and given to this one (their seconds are that run's)
                      **({"members_from": {str(i): m.source for i, m in enumerate(members) if m.source}}
                         if any(m.source for m in members) else {}),
                      arithmetic=first.arithmetic,
                      **({"worker": worker} if worker else {}),
                      # every process that trained a member or a part of one (timnet.dispatch.state):
                      # with members in several workers, or a resumed fold, more than `worker`'s
                      cpu_dispatch=distinct([r for m in members for r in m.machines]))
        save_checkpoint(fdir / "model.pt", model, feature_config=self.fs.config, labels=self.fs.labels,
                        corpus=self.fs.corpus, extra={
                            "fold": k, "n_samples": len(self.fs), "seed": self.seed, "split": self.split,
                            "train_idx": tr.tolist(), "val_idx": va.tolist(), "test_idx": test_idx.tolist(),
                            "epoch": first.epoch, "train_config": asdict(self.config)})
        _write_histories(fdir, members)
        write_json(fdir / "result.json", result)  # written last: its presence means the fold is complete
        _clear_partial(fdir)
        return result

    def done_results(self) -> dict[int, dict]:
        """Results of the folds finished before (their result.json exists), each checked to be whole:
        a damaged result, or a done fold's model.pt cut short, is named, not kept. A fold with its
        figures and no model.pt is done (the benchmarks' ledger restores figures only, never weights)."""
        out = {}
        for k in range(1, self.folds_n + 1):
            done = self.fold_dir(k) / "result.json"
            if not done.is_file():
                continue
            out[k] = read_fold_result(done)
            model = self.fold_dir(k) / "model.pt"
            if model.exists() and not zipfile.is_zipfile(model):  # torch.save writes a zip, its directory at the end
                raise TimnetError(f"{model}: cut short or damaged, though {done.name} says fold {k} is done; delete "
                                  f"{done} to train that fold again")
        return out

    def write_summary(self, results: dict[int, dict]) -> dict:
        """results.json (INTERFACE.md) and results.csv from every fold's result (validation.json for
        a validation-only run)."""
        ordered = [results[k] for k in sorted(results)]
        if not self.evaluate_test:
            summary = {"corpus": self.fs.corpus, "split": self.split, "folds_n": len(ordered), "seed": self.seed,
                       **validation_summary(ordered)}
            write_json(self.dir / "validation.json", summary)
            return summary
        summary = summarize(ordered, corpus=self.fs.corpus, labels=self.fs.labels, split=self.split, seed=self.seed)
        summary.update(select=self.config.select, epochs=self.config.epochs)
        write_json(self.dir / "results.json", summary)
        write_csv(self.dir / "results.csv", [{"fold": r["fold"], "n_test": r["n_test"], "war": r["war"], "uar": r["uar"],
                                               "epoch": r.get("epoch")} for r in ordered]
                   + [{"fold": "mean", "war": summary["mean_war"], "uar": summary["mean_uar"]},
                      {"fold": "std", "war": summary["std_war"], "uar": summary["std_uar"]}])
        return summary

    def execute(self, *, workers: int = 1, progress: bool = True, log: Callable[[str], None] = print,
                backend=None) -> dict:
        """Train every fold not yet done, evaluate each once, write results; returns the summary."""
        from .backends import LocalBackend

        return execute_runs([self], backend=backend or LocalBackend(workers), progress=progress, log=log)[0]


def _figures(result: dict) -> str:
    if result.get("diverged"):
        return f"diverged ({result['diverged']})"
    if "war" in result:
        return f"WAR {result['war']:.4f}  UAR {result['uar']:.4f}"
    return f"validation WAR {result['val_war']:.4f}  UAR {result['val_uar']:.4f}"


def execute_runs(runs: list[Run], *, backend, progress: bool = True, log: Callable[[str], None] = print,
                 fold_major: bool = False) -> list[dict]:
    """Train the unfinished folds of several runs (seeds, trials) on one backend; one summary per run.

    Folds are scheduled run by run, so a seed finishes whole as early as possible; `fold_major`
    schedules fold 1 of every run, then fold 2, ..., so that comparisons paired fold by fold
    (recipe selection) have complete pairs when work is stopped part way.
    """
    results = [run.done_results() for run in runs]
    names = [f"{run.dir.name} " if len(runs) > 1 else "" for run in runs]
    tasks = []
    for ri, run in enumerate(runs):
        name = names[ri]
        for k in range(1, run.folds_n + 1):
            if k in results[ri]:
                log(f"{name}fold {k}/{run.folds_n}: done before, kept ({_figures(results[ri][k])})")
            else:
                tasks.append((ri, k))
    for ri in sorted({ri for ri, _ in tasks}):  # a run resumed where its arithmetic rounds otherwise
        run = runs[ri]
        if results[ri] or any(_partial(run.fold_dir(k)) for k in range(1, run.folds_n + 1)):
            todo = {m for r, k in tasks if r == ri for m in set(range(run.config.members)) - run.members_done(k)}
            if note := dispatch_change(run.dir, run.config, todo, [run.fold_dir(k) for k in range(1, run.folds_n + 1)]):
                warnings.warn(note, stacklevel=2)
    if fold_major:
        tasks.sort(key=lambda task: (task[1], task[0]))
    with FoldProgress(runs, tasks, enabled=progress) as bar:
        for (ri, k), result in backend.map(runs, tasks, bar.epoch):
            results[ri][k] = result
            bar.finished((ri, k))
            when = "" if result.get("diverged") else \
                f"  (epoch {result['epoch']} of {result['epochs_run']}, {result['seconds']:.0f} s)"
            bar.write(f"{names[ri]}fold {k}/{runs[ri].folds_n}: {_figures(result)}{when}", log)
    return [run.write_summary(res) for run, res in zip(runs, results)]


SEEDS_FILE = "seeds.json"


def validation_summary(folds: list[dict]) -> dict:
    """The folds of a validation-only run with their mean and (population) std of UAR and WAR; None
    for each where a fold diverged (`diverged_folds`): a mean over the others would flatter the trial."""
    if lost := [f["fold"] for f in folds if f.get("diverged")]:
        return {"folds": folds, "diverged_folds": lost,
                **{f"{s}_val_{m}": None for s in ("mean", "std") for m in ("uar", "war")}}
    uars, wars = np.array([f["val_uar"] for f in folds]), np.array([f["val_war"] for f in folds])
    return {"folds": folds, "mean_val_uar": float(uars.mean()), "std_val_uar": float(uars.std()),
            "mean_val_war": float(wars.mean()), "std_val_war": float(wars.std())}


def _check_not_sweep(run_dir: Path) -> None:
    """Refuse a sweep's folder, even with --overwrite, as `sweep` refuses a run's: the two would be
    mixed, not replaced."""
    if (run_dir / "sweep.json").is_file() or any(run_dir.glob(f"trial_*/{RUN_FILE}")):
        raise TimnetError(f"{run_dir} holds a sweep (trial_NNN runs); a training run writes fold_NN/ folds: "
                          "give another RUN_DIR")


def seed_runs(run_dir: str | Path, *, seeds: list[int], make_run: Callable[[Path, int], Run],
              overwrite: bool = False) -> list[Run]:
    """One prepared Run per seed, made by make_run(folder, seed): RUN_DIR itself for one seed,
    RUN_DIR/seed_<s> for several.

    Several seeds give several fold splits (random split) and initialisations; their runs resume
    independently, and `summarize_seeds` reports the spread across them.
    """
    run_dir = Path(run_dir)
    if not seeds:
        raise TimnetError("--seeds: expected at least one seed, e.g. 46,47,48")
    if len(seeds) != len(set(seeds)):
        raise TimnetError(f"--seeds {','.join(map(str, seeds))}: a seed is repeated")
    for s in seeds:  # before --overwrite deletes anything
        check_seed(s)
    if len(seeds) == 1:
        runs = [make_run(run_dir, seeds[0])]
    else:
        _check_not_sweep(run_dir)
        runs = [make_run(run_dir / f"seed_{s}", s) for s in seeds]
        single = (run_dir / RUN_FILE).is_file()
        if single and not overwrite:
            raise TimnetError(f"{run_dir} holds a single-seed run; use another RUN_DIR for --seeds (or --overwrite, "
                              "which deletes that run)")
        others = [p for p in run_dir.glob("seed_*") if (p / RUN_FILE).is_file() and p not in {r.dir for r in runs}]
        if overwrite and (single or others):  # the old run is replaced, a single seed's or other seeds'
            for run in runs:  # every seed's folds split before anything is deleted
                run.splits_digest()
            if single:  # only what a single-seed run wrote goes; anything else in the folder is the user's
                _remove_run_outputs(run_dir)
            for p in others:
                remove_run(p)
        foreign = [p.name for p in run_dir.iterdir()
                   if not p.name.startswith("seed_") and p.name not in (SEEDS_FILE, "seeds.csv")] if run_dir.is_dir() else []
        if foreign and not overwrite:
            raise TimnetError(f"{run_dir} holds files that are not seed runs ({', '.join(sorted(foreign)[:3])}); "
                              "expected an empty or new folder (or --overwrite, which keeps them and adds the seed runs)")
    # the folders that hold a run first: one of them refused (another configuration) leaves no new
    # seed folder behind, which the corrected command would then refuse in its turn
    for run in sorted(runs, key=lambda r: not (r.dir / RUN_FILE).is_file()):
        run.resumed = run.prepare(overwrite=overwrite)
    return runs


def summarize_seeds(summaries: list[dict]) -> dict:
    """The results of a multi-seed run: per-seed means, their mean and sample standard deviation
    (ddof 1) across seeds, the contract's `folds` list (every seed's folds, each naming its seed)
    and each seed's own summary under `runs`."""
    per_seed = [{k: s[k] for k in ("seed", "mean_war", "mean_uar", "std_war", "std_uar")} for s in summaries]
    wars = np.array([s["mean_war"] for s in summaries])
    uars = np.array([s["mean_uar"] for s in summaries])
    first = summaries[0]
    return {"corpus": first["corpus"], "labels": first["labels"], "split": first["split"], "folds_n": first["folds_n"],
            "seeds": [s["seed"] for s in summaries], "per_seed": per_seed,
            "mean_war": float(wars.mean()), "mean_uar": float(uars.mean()),
            "std_war": float(wars.std(ddof=1)), "std_uar": float(uars.std(ddof=1)),
            "std_note": "sample standard deviation of the per-seed means (ddof=1)",
            "folds": [{"seed": s["seed"], **f} for s in summaries for f in s["folds"]], "runs": summaries}


def write_seed_summary(run_dir: str | Path, summary: dict) -> None:
    """RUN_DIR/seeds.json and seeds.csv of a multi-seed run."""
    run_dir = Path(run_dir)
    write_json(run_dir / SEEDS_FILE, summary)
    write_csv(run_dir / "seeds.csv", summary["per_seed"] + [
        {"seed": "mean", "mean_war": summary["mean_war"], "mean_uar": summary["mean_uar"]},
        {"seed": "std", "mean_war": summary["std_war"], "mean_uar": summary["std_uar"]}])


def train_all_data(fs: FeatureSet, out_dir: str | Path, *, config: TrainConfig, seed: int | None = None,
                   threads: int = 1, device: str = "cpu", path: str = "auto", overwrite: bool = False,
                   progress: bool = True, model_overrides: dict | None = None) -> Path:
    """Train the recipe's deployable model on every sample (with `config.members` > 1, an ensemble in
    one checkpoint); it has no test score.

    Cross-validation estimates how well the recipe generalises; this model, trained the same
    way on all the data, is the one to use. OUT_DIR gets model.pt, history.csv and run.json;
    an interrupted run resumes like a fold.
    """
    seed, model_config = _seed_and_model(fs, config, seed, model_overrides)
    out_dir = Path(out_dir)
    identity = {**_identity(fs, config=config, model_config=model_config, seed=seed, threads=threads, device=device,
                            path=path), "all_data": True}
    tr, va = validation_split(np.arange(len(fs)), fs.y, fraction=config.val_fraction, seed=seed, labels=fs.labels)  # before --overwrite deletes
    resumed = prepare_run_dir(out_dir, identity, overwrite=overwrite)
    if resumed and (out_dir / "model.pt").is_file() and not _partial(out_dir):
        return out_dir / "model.pt"  # finished before: the same command does not train it again
    if resumed and _partial(out_dir) and (note := dispatch_change(out_dir, config, folders=[out_dir])):
        warnings.warn(note, stacklevel=2)
    with progress_bar(total=config.epochs * config.members, desc="all data", unit="ep", enabled=progress) as bar, \
            torch_threads(threads):
        def on_epoch(row: dict) -> None:
            bar.update(row["epoch"] - bar.n)
            bar.set_postfix_str(f"loss {row['loss']:.3f} acc {row['acc']:.3f}", refresh=False)

        model, members = train_members(torch.from_numpy(np.ascontiguousarray(fs.x)), torch.from_numpy(fs.y), tr, va,
                                       model_config=model_config, config=config, seed=seed, folder=out_dir,
                                       on_epoch=on_epoch, device=device, path=identity["path"])
    path = save_checkpoint(out_dir / "model.pt", model, feature_config=fs.config, labels=fs.labels, corpus=fs.corpus,
                           extra={"all_data": True, "n_samples": len(fs), "seed": seed,
                                  # the first member's epoch: the last, or best-val's choice, or for an
                                  # averaging recipe the end of its window (each member has its own)
                                  "epoch": members[0].epoch,
                                  "train_config": asdict(config), "train_idx": tr.tolist(), "val_idx": va.tolist()})
    _write_histories(out_dir, members)
    _clear_partial(out_dir)
    return path
