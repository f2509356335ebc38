"""A cross-validated training run in a RUN_DIR: folds, resume, checkpoints, results.

RUN_DIR/
  run.json               configs, features fingerprint, command, package versions
  fold_01/state.pt       resumable snapshot (removed when the fold is done)
  fold_01/model.pt       the fold's chosen model: a checkpoint that predicts on its own
  fold_01/history.csv    per-epoch train loss/accuracy (and validation loss/WAR/UAR)
  fold_01/result.json    the fold's test result; its presence marks the fold as done
  results.json, results.csv   the summary (INTERFACE.md), written when every fold is done
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .corpora import defaults_for
from .errors import TimnetError
from .evaluate import fold_result, predict_proba, summarize
from .features import FeatureSet
from .folds import make_folds
from .model import TIMNetConfig
from .train import TrainConfig, fold_seed, resolve_path, train_fold, validation_split
from .utils import atomic_write, write_json

RUN_FILE = "run.json"
# Identity keys added after a run format was first written, with the value older runs implied.
LEGACY_IDENTITY = {"device": "cpu", "path": "reference"}


def features_fingerprint(fs: FeatureSet) -> str:
    """A short hash of the features and labels, so a RUN_DIR is never resumed on other data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(fs.x).tobytes())
    h.update(np.ascontiguousarray(fs.y).tobytes())
    return h.hexdigest()[:16]


def versions() -> dict:
    """Versions of what decides the numbers: Python, torch, numpy, librosa, and the machine."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "threads": torch.get_num_threads()}
    for pkg in ("timnet", "torch", "numpy", "scipy", "librosa", "soxr", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def read_identity(run_dir: str | Path) -> dict:
    """The identity (configs, data fingerprint, seed, split) recorded in a RUN_DIR's run.json."""
    path = Path(run_dir) / RUN_FILE
    try:
        return {**LEGACY_IDENTITY, **json.loads(path.read_text())["identity"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise TimnetError(f"{path}: not a readable timnet run file ({type(e).__name__})") from None


def prepare_run_dir(run_dir: Path, identity: dict, *, overwrite: bool, results: tuple[str, ...],
                    extra: dict | None = None) -> bool:
    """Create or check a run folder for `identity`; True when it already holds this run (resume).

    A folder holding another configuration, or files that are not a run, is refused unless
    `overwrite`, which deletes the old run's folds and `results` files first.
    """
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        try:
            previous = read_identity(run_dir)
        except TimnetError:
            previous = None
        if previous == identity:
            return True
        if not overwrite:
            diff = sorted(k for k in identity if previous is None or previous.get(k) != identity.get(k))
            hint = (f"; to resume it pass --threads {previous['threads_per_fold']}"
                    if diff == ["threads_per_fold"] else "")
            raise TimnetError(f"{run_dir} holds a run with a different configuration ({', '.join(diff)}); "
                              f"use another RUN_DIR or --overwrite (which deletes it){hint}")
        for child in run_dir.glob("fold_*"):
            shutil.rmtree(child)
        for name in (*results, RUN_FILE):
            (run_dir / name).unlink(missing_ok=True)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise TimnetError(f"{run_dir} exists and is not a timnet RUN_DIR; expected an empty or new folder (or --overwrite)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"identity": identity, "command": sys.argv, **(extra or {}), "versions": versions(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return False


def model_config_for(fs: FeatureSet) -> TIMNetConfig:
    """The paper's network for a feature set: the corpus's dilation levels, its class count."""
    levels = defaults_for(fs.corpus)[1]
    return TIMNetConfig(n_features=fs.x.shape[2], dilations=levels, n_classes=len(fs.labels))


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())


class Run:
    """One cross-validated training run; `execute` trains (or resumes) every fold."""

    def __init__(self, fs: FeatureSet, run_dir: str | Path, *, config: TrainConfig, folds: int = 10,
                 seed: int | None = None, split: str = "random", threads: int = 1, device: str = "cpu",
                 path: str = "auto", features_path: str | None = None):
        self.fs, self.dir, self.config = fs, Path(run_dir), config
        self.folds_n, self.split = folds, split
        self.seed = seed if seed is not None else defaults_for(fs.corpus)[0]
        self.model_config = model_config_for(fs)
        self.splits = make_folds(len(fs), folds=folds, seed=self.seed, split=split, speakers=fs.speakers)
        self.identity = {
            "corpus": fs.corpus, "labels": list(fs.labels), "n_samples": len(fs),
            "features_fingerprint": features_fingerprint(fs), "folds": folds, "seed": self.seed,
            "split": split, "train_config": asdict(config), "model_config": asdict(self.model_config),
            "feature_config": asdict(fs.config),
            # float results depend on the thread count of the reductions, so it is part of the run
            "threads_per_fold": threads,
            "device": torch.device(device).type,
            # the fast path computes the same mathematics in another order: last float bits differ
            "path": resolve_path(path, device),
        }
        self.threads, self.device, self.path = threads, device, self.identity["path"]
        self.features_path = features_path

    # -- the RUN_DIR ---------------------------------------------------------------------------
    def prepare(self, *, overwrite: bool = False) -> bool:
        """Create or check RUN_DIR; returns True when resuming. A different config is refused."""
        return prepare_run_dir(self.dir, self.identity, overwrite=overwrite, results=("results.json", "results.csv"),
                               extra={"features": self.features_path})

    def fold_dir(self, k: int) -> Path:
        return self.dir / f"fold_{k:02d}"

    # -- training ------------------------------------------------------------------------------
    def train_and_test_fold(self, k: int, *, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train (or resume) fold k, evaluate its chosen model once on its test split, save everything."""
        train_idx, test_idx = self.splits[k - 1]
        fdir = self.fold_dir(k)
        fdir.mkdir(parents=True, exist_ok=True)
        seed = fold_seed(self.seed, k)
        tr, va = validation_split(train_idx, self.fs.y, fraction=self.config.val_fraction, seed=seed)
        torch.set_num_threads(self.threads)
        x = torch.from_numpy(np.ascontiguousarray(self.fs.x))
        y = torch.from_numpy(self.fs.y)
        state_path = fdir / "state.pt"
        t0 = time.perf_counter()
        model, state = train_fold(x, y, tr, va, model_config=self.model_config, config=self.config,
                                  seed=seed, state_path=state_path, on_epoch=on_epoch, device=self.device,
                                  path=self.path)
        # The test split is touched here, once, after the model has been chosen.
        probs, _ = predict_proba(model, self.fs.x[test_idx])
        result = fold_result(k, self.fs, test_idx, probs.argmax(1))
        chosen = state.best["epoch"] if (self.config.select == "best-val" and state.best) else state.epoch
        result.update(epoch=chosen, epochs_run=state.epoch, stopped_early=state.stopped_early,
                      seconds=round(time.perf_counter() - t0, 2))
        save_checkpoint(fdir / "model.pt", model, feature_config=self.fs.config, labels=self.fs.labels,
                        corpus=self.fs.corpus, extra={
                            "fold": k, "n_samples": len(self.fs), "seed": self.seed, "split": self.split,
                            "train_idx": tr.tolist(), "val_idx": va.tolist(), "test_idx": test_idx.tolist(),
                            "epoch": chosen, "train_config": asdict(self.config)})
        _write_csv(fdir / "history.csv", state.history)
        write_json(fdir / "result.json", result)  # written last: its presence means the fold is complete
        state_path.unlink(missing_ok=True)
        return result

    def execute(self, *, workers: int = 1, progress: bool = True, log: Callable[[str], None] = print) -> dict:
        """Train every fold not yet done (`workers` at a time), evaluate each once, write results."""
        results: dict[int, dict] = {}
        todo = []
        for k in range(1, self.folds_n + 1):
            done = self.fold_dir(k) / "result.json"
            if done.is_file():
                results[k] = json.loads(done.read_text())
                log(f"fold {k}/{self.folds_n}: done before, kept (WAR {results[k]['war']:.4f}, UAR {results[k]['uar']:.4f})")
            else:
                todo.append(k)
        with FoldProgress(self, todo, enabled=progress) as bar:
            for k, result in _run_folds(self, todo, workers=workers, bar=bar):
                results[k] = result
                bar.write(f"fold {k}/{self.folds_n}: WAR {result['war']:.4f}  UAR {result['uar']:.4f}  "
                          f"(epoch {result['epoch']} of {result['epochs_run']}, {result['seconds']:.0f} s)", log)
        ordered = [results[k] for k in sorted(results)]
        summary = summarize(ordered, corpus=self.fs.corpus, labels=self.fs.labels, split=self.split, seed=self.seed)
        summary.update(select=self.config.select, epochs=self.config.epochs)
        write_json(self.dir / "results.json", summary)
        _write_csv(self.dir / "results.csv", [{"fold": r["fold"], "n_test": r["n_test"], "war": r["war"], "uar": r["uar"],
                                               "epoch": r.get("epoch")} for r in ordered]
                   + [{"fold": "mean", "war": summary["mean_war"], "uar": summary["mean_uar"]},
                      {"fold": "std", "war": summary["std_war"], "uar": summary["std_uar"]}])
        return summary


def train_all_data(fs: FeatureSet, out_dir: str | Path, *, config: TrainConfig, seed: int | None = None,
                   threads: int = 1, device: str = "cpu", path: str = "auto", overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Train one model on every sample (the recipe's deployable model; it has no test score).

    Cross-validation estimates how well the recipe generalises; this model, trained the same
    way on all the data, is the one to use. OUT_DIR gets model.pt, history.csv and run.json;
    an interrupted run resumes like a fold.
    """
    from tqdm.auto import tqdm

    seed = seed if seed is not None else defaults_for(fs.corpus)[0]
    out_dir = Path(out_dir)
    model_config = model_config_for(fs)
    identity = {"corpus": fs.corpus, "labels": list(fs.labels), "n_samples": len(fs), "all_data": True,
                "features_fingerprint": features_fingerprint(fs), "seed": seed, "train_config": asdict(config),
                "model_config": asdict(model_config), "feature_config": asdict(fs.config), "threads_per_fold": threads,
                "device": torch.device(device).type, "path": resolve_path(path, device)}
    prepare_run_dir(out_dir, identity, overwrite=overwrite, results=("state.pt", "model.pt", "history.csv"))
    torch.set_num_threads(threads)
    tr, va = validation_split(np.arange(len(fs)), fs.y, fraction=config.val_fraction, seed=seed)
    bar = tqdm(total=config.epochs, desc="all data", unit="ep", disable=not progress)

    def on_epoch(row: dict) -> None:
        bar.update(row["epoch"] - bar.n)
        bar.set_postfix_str(f"loss {row['loss']:.3f} acc {row['acc']:.3f}", refresh=False)

    model, state = train_fold(torch.from_numpy(np.ascontiguousarray(fs.x)), torch.from_numpy(fs.y), tr, va,
                              model_config=model_config, config=config, seed=seed, state_path=out_dir / "state.pt",
                              on_epoch=on_epoch, device=device, path=identity["path"])
    bar.close()
    path = save_checkpoint(out_dir / "model.pt", model, feature_config=fs.config, labels=fs.labels, corpus=fs.corpus,
                           extra={"all_data": True, "n_samples": len(fs), "seed": seed, "epoch": state.epoch,
                                  "train_config": asdict(config), "train_idx": tr.tolist(), "val_idx": va.tolist()})
    _write_csv(out_dir / "history.csv", state.history)
    (out_dir / "state.pt").unlink(missing_ok=True)
    return path


class FoldProgress:
    """One progress bar over all epochs of the folds being trained, showing each running fold."""

    def __init__(self, run: Run, folds: list[int], *, enabled: bool):
        from tqdm.auto import tqdm

        self.epochs = run.config.epochs
        self.bar = tqdm(total=len(folds) * self.epochs, unit="ep", disable=not enabled,
                        desc=f"{len(folds)} folds", dynamic_ncols=True)
        self.status: dict[int, str] = {}
        self.seen: dict[int, int] = {}

    def epoch(self, fold: int, row: dict) -> None:
        """Record that `fold` finished the epoch described by `row`."""
        shown = f"ep {row['epoch']} loss {row['loss']:.3f}"
        if "val_uar" in row:
            shown += f" val_uar {row['val_uar']:.3f}"
        self.status[fold] = shown
        self.bar.update(row["epoch"] - self.seen.get(fold, 0))
        self.seen[fold] = row["epoch"]
        self.bar.set_postfix_str(" | ".join(f"f{k}: {v}" for k, v in sorted(self.status.items())), refresh=False)

    def finished(self, fold: int) -> None:
        self.bar.update(self.epochs - self.seen.get(fold, 0))  # early stopping skips epochs
        self.seen[fold] = self.epochs
        self.status.pop(fold, None)

    def write(self, message: str, log: Callable[[str], None]) -> None:
        if self.bar.disable:
            log(message)
        else:
            self.bar.write(message, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


# -- parallel folds ------------------------------------------------------------------------------
# Folds are independent, so they run in worker processes with one or a few threads each: on small
# CPUs that beats one process with all threads (the network's ops are too small to scale well).

_WORKER: dict = {}


def _worker_init(run: Run, queue) -> None:
    import signal

    # Ctrl-C reaches the whole process group; the parent alone decides to stop (and ends the
    # workers), otherwise each worker would treat it as one failed fold and start the next.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(run=run, queue=queue, parent=os.getppid())


def _worker_fold(k: int) -> tuple[int, dict]:
    run, queue = _WORKER["run"], _WORKER["queue"]

    def on_epoch(row: dict) -> None:
        if os.getppid() != _WORKER["parent"]:  # the parent was killed: do not train on as an orphan
            os._exit(1)
        queue.put((k, row))

    return k, run.train_and_test_fold(k, on_epoch=on_epoch)


def _run_folds(run: Run, folds: list[int], *, workers: int, bar: FoldProgress):
    """Yield (fold, result) as folds finish, training `workers` folds at a time."""
    if workers <= 1 or len(folds) <= 1:
        for k in folds:
            result = run.train_and_test_fold(k, on_epoch=lambda row, k=k: bar.epoch(k, row))
            bar.finished(k)
            yield k, result
        return
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # fork after torch has run threads is not safe
    q = ctx.Manager().Queue()
    pool = ProcessPoolExecutor(min(workers, len(folds)), mp_context=ctx, initializer=_worker_init, initargs=(run, q))
    try:
        pending = {pool.submit(_worker_fold, k): k for k in folds}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    k, row = q.get_nowait()
                except queue_mod.Empty:
                    break
                bar.epoch(k, row)
            for future in done:
                k = pending.pop(future)
                try:
                    _, result = future.result()
                except BrokenProcessPool:
                    unfinished = ", ".join(str(f) for f in sorted({k, *pending.values()}))
                    raise TimnetError(f"a training worker died (unfinished folds: {unfinished}); "
                                      "run the same command again to resume") from None
                bar.finished(k)
                yield k, result
    except BaseException:
        # Interrupted or failed: end the workers now instead of letting them train the queued folds.
        # Their snapshots and results are written atomically, so the next run resumes cleanly.
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
