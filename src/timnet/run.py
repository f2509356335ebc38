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
from .corpora import get_corpus
from .errors import TimnetError
from .evaluate import fold_result, predict_proba, summarize
from .features import FeatureSet
from .folds import make_folds
from .model import TIMNetConfig
from .train import TrainConfig, fold_seed, train_fold, validation_split
from .utils import atomic_write

RUN_FILE = "run.json"


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


def model_config_for(fs: FeatureSet) -> TIMNetConfig:
    """The paper's network for a feature set: the corpus's dilation levels, its class count."""
    try:
        levels = get_corpus(fs.corpus).dilations
    except TimnetError:
        levels = 8  # a corpus outside the registry (user folders) gets the paper's default
    return TIMNetConfig(n_features=fs.x.shape[2], dilations=levels, n_classes=len(fs.labels))


def _write_json(path: Path, obj) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


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
                 seed: int | None = None, split: str = "random", features_path: str | None = None):
        self.fs, self.dir, self.config = fs, Path(run_dir), config
        self.folds_n, self.split = folds, split
        self.seed = seed if seed is not None else get_corpus(fs.corpus).seed
        self.model_config = model_config_for(fs)
        self.splits = make_folds(len(fs), folds=folds, seed=self.seed, split=split, speakers=fs.speakers)
        self.identity = {
            "corpus": fs.corpus, "labels": list(fs.labels), "n_samples": len(fs),
            "features_fingerprint": features_fingerprint(fs), "folds": folds, "seed": self.seed,
            "split": split, "train_config": asdict(config), "model_config": asdict(self.model_config),
            "feature_config": asdict(fs.config),
        }
        self.features_path = features_path

    # -- the RUN_DIR ---------------------------------------------------------------------------
    def prepare(self, *, overwrite: bool = False) -> bool:
        """Create or check RUN_DIR; returns True when resuming. A different config is refused."""
        run_file = self.dir / RUN_FILE
        if run_file.is_file():
            try:
                previous = json.loads(run_file.read_text())["identity"]
            except (json.JSONDecodeError, KeyError):
                previous = None
            if previous == self.identity:
                return True
            if not overwrite:
                diff = sorted(k for k in self.identity if previous is None or previous.get(k) != self.identity.get(k))
                raise TimnetError(f"{self.dir} holds a run with a different configuration ({', '.join(diff)}); "
                                  "use another RUN_DIR or --overwrite")
            for child in self.dir.glob("fold_*"):
                shutil.rmtree(child)
            for name in ("results.json", "results.csv", RUN_FILE):
                (self.dir / name).unlink(missing_ok=True)
        elif self.dir.exists() and any(self.dir.iterdir()) and not overwrite:
            raise TimnetError(f"{self.dir} exists and is not a timnet RUN_DIR; expected an empty or new folder (or --overwrite)")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_file, {"identity": self.identity, "command": sys.argv, "features": self.features_path,
                               "versions": versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        return False

    def fold_dir(self, k: int) -> Path:
        return self.dir / f"fold_{k:02d}"

    # -- training ------------------------------------------------------------------------------
    def execute(self, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
        """Train every fold not yet done, evaluate each once on its test split, write results."""
        from tqdm.auto import tqdm

        x = torch.from_numpy(np.ascontiguousarray(self.fs.x))
        y = torch.from_numpy(self.fs.y)
        results = []
        for k, (train_idx, test_idx) in enumerate(self.splits, start=1):
            fdir = self.fold_dir(k)
            done = fdir / "result.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
                log(f"fold {k}/{self.folds_n}: done before, kept (WAR {results[-1]['war']:.4f}, UAR {results[-1]['uar']:.4f})")
                continue
            fdir.mkdir(parents=True, exist_ok=True)
            seed = fold_seed(self.seed, k)
            tr, va = validation_split(train_idx, self.fs.y, fraction=self.config.val_fraction, seed=seed)
            bar = tqdm(total=self.config.epochs, desc=f"fold {k}/{self.folds_n}", unit="ep", disable=not progress, leave=False)

            def on_epoch(row: dict) -> None:
                shown = {"loss": f"{row['loss']:.3f}", "acc": f"{row['acc']:.3f}"}
                if "val_uar" in row:
                    shown["val_uar"] = f"{row['val_uar']:.3f}"
                bar.n = row["epoch"]
                bar.set_postfix(shown, refresh=False)
                bar.update(0)

            state_path = fdir / "state.pt"
            t0 = time.perf_counter()
            model, state = train_fold(x, y, tr, va, model_config=self.model_config, config=self.config,
                                      seed=seed, state_path=state_path, on_epoch=on_epoch)
            bar.close()
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
            _write_json(done, result)  # written last: its presence means the fold is complete
            state_path.unlink(missing_ok=True)
            results.append(result)
            log(f"fold {k}/{self.folds_n}: WAR {result['war']:.4f}  UAR {result['uar']:.4f}  "
                f"(epoch {chosen} of {state.epoch}, {result['seconds']:.0f} s)")
        summary = summarize(results, corpus=self.fs.corpus, labels=self.fs.labels, split=self.split, seed=self.seed)
        summary["select"] = self.config.select
        summary["epochs"] = self.config.epochs
        _write_json(self.dir / "results.json", summary)
        _write_csv(self.dir / "results.csv", [{"fold": r["fold"], "n_test": r["n_test"], "war": r["war"], "uar": r["uar"],
                                               "epoch": r.get("epoch")} for r in results]
                   + [{"fold": "mean", "war": summary["mean_war"], "uar": summary["mean_uar"]},
                      {"fold": "std", "war": summary["std_war"], "uar": summary["std_uar"]}])
        return summary
