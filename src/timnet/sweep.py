"""Hyper-parameter search scored on validation data only, then one test of the chosen configuration.

SPACE (YAML or JSON) maps a parameter to a value or a distribution; data only, never code:

    lr: {loguniform: [1.0e-4, 3.0e-3]}
    batch_size: {choice: [32, 64]}
    dropout: {uniform: [0.05, 0.3]}
    label_smoothing: {grid: [0.0, 0.1]}
    epochs: 100

Parameters are the fields of TrainConfig and the network's `dropout`. Every grid point is combined
with `trials` random draws (seeded: the same trials on any backend). Each trial is a
cross-validated run whose folds carve a validation set from their training part and are scored on
it alone (`Run(evaluate_test=False)`); the objective is the mean validation UAR over folds. Only
when every trial is done is the best trial's fold models evaluated on their test folds, once.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from .errors import TimnetError
from .evaluate import evaluate, fold_models, summarize
from .features import FeatureSet
from .run import Run, _write_csv, execute_runs
from .train import TrainConfig
from .utils import write_json

MODEL_PARAMS = ("dropout",)
KINDS = ("choice", "uniform", "loguniform", "randint", "grid")


def train_params() -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainConfig))


def load_space(path: str | Path) -> dict:
    """Read and check a SPACE file (YAML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TimnetError(f"{path}: cannot read the search space ({e.strerror})") from None
    try:
        if path.suffix == ".json":
            space = json.loads(text)
        else:
            import yaml

            space = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise many types for a malformed file
        raise TimnetError(f"{path}: not a valid search space file ({type(e).__name__})") from None
    space = _numbers(space)
    check_space(space, source=str(path))
    return space


def _numbers(obj):
    """YAML 1.1 reads 1e-4 (no dot) as a string: take numeric-looking strings as numbers."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str):
        try:
            return float(obj)
        except ValueError:
            return obj
    return obj


def check_space(space, *, source: str = "space") -> None:
    """Every key a known parameter, every distribution well formed."""
    if not isinstance(space, dict) or not space:
        raise TimnetError(f"{source}: expected a mapping of parameters to values or distributions")
    known = (*train_params(), *MODEL_PARAMS)
    for name, spec in space.items():
        if name not in known:
            raise TimnetError(f"{source}: unknown parameter {name!r}; expected one of {', '.join(known)}")
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise TimnetError(f"{source}: {name}: expected one of {', '.join(KINDS)} with its arguments")
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise TimnetError(f"{source}: {name}: {kind} needs a list")
            if kind in ("uniform", "loguniform", "randint") and (len(args) != 2 or not args[0] < args[1]):
                raise TimnetError(f"{source}: {name}: {kind} needs [low, high] with low < high")
            if kind == "loguniform" and args[0] <= 0:
                raise TimnetError(f"{source}: {name}: loguniform needs a positive low bound")


def sample_trials(space: dict, *, trials: int, seed: int) -> list[dict]:
    """Parameter sets: the grid's product, each with `trials` seeded random draws of the rest."""
    if trials < 1:
        raise TimnetError(f"--trials {trials} invalid; expected a positive number")
    rng = np.random.default_rng(seed)
    grid_keys = [k for k, v in space.items() if isinstance(v, dict) and "grid" in v]
    grid = list(itertools.product(*(space[k]["grid"] for k in grid_keys))) or [()]
    out = []
    for point in grid:
        for _ in range(trials):
            params = dict(zip(grid_keys, point))
            for name, spec in space.items():
                if name in params:
                    continue
                if not isinstance(spec, dict):
                    params[name] = spec
                    continue
                kind, args = next(iter(spec.items()))
                if kind == "choice":
                    params[name] = args[int(rng.integers(len(args)))]
                elif kind == "uniform":
                    params[name] = float(rng.uniform(args[0], args[1]))
                elif kind == "loguniform":
                    params[name] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
                elif kind == "randint":
                    params[name] = int(rng.integers(args[0], args[1] + 1))
            out.append(params)
    return out


def trial_runs(fs: FeatureSet, sweep_dir: str | Path, params_list: list[dict], *, base: TrainConfig,
               overwrite: bool = False, names: list[str] | None = None, **run_kwargs) -> list[Run]:
    """One prepared validation-only Run per parameter set, in SWEEP_DIR/trial_NNN (or SWEEP_DIR/<name>)."""
    runs = []
    types = {f.name: type(getattr(base, f.name)) for f in fields(TrainConfig)}
    types["patience"] = int  # its default is None
    for i, params in enumerate(params_list, start=1):
        params = {k: _cast(v, types.get(k, float)) for k, v in params.items()}
        train = {k: v for k, v in params.items() if k in train_params()}
        model = {k: v for k, v in params.items() if k in MODEL_PARAMS}
        try:
            config = replace(base, **train)
        except (TypeError, TimnetError) as e:
            raise TimnetError(f"trial {i} ({params}): {e}") from None
        folder = names[i - 1] if names else f"trial_{i:03d}"
        run = Run(fs, Path(sweep_dir) / folder, config=config, model_overrides=model,
                  evaluate_test=False, **run_kwargs)
        run.params = params
        run.prepare(overwrite=overwrite)
        runs.append(run)
    return runs


def run_sweep(fs: FeatureSet, sweep_dir: str | Path, *, space: dict, trials: int, base: TrainConfig, backend,
              seed: int, progress: bool = True, log=print, overwrite: bool = False, **run_kwargs) -> dict:
    """Train every trial's folds (validation only), pick the best mean validation UAR, test it once."""
    sweep_dir = Path(sweep_dir)
    if base.val_fraction == 0:
        raise TimnetError("a sweep scores trials on validation data: give --val-fraction (e.g. 0.2)")
    params_list = sample_trials(space, trials=trials, seed=seed)
    runs = trial_runs(fs, sweep_dir, params_list, base=base, overwrite=overwrite, seed=seed, **run_kwargs)
    summaries = execute_runs(runs, backend=backend, progress=progress, log=log)
    table = [{"trial": run.dir.name, **run.params, "val_uar": s["mean_val_uar"], "val_uar_std": s["std_val_uar"],
              "val_war": s["mean_val_war"]} for run, s in zip(runs, summaries)]
    best = max(range(len(runs)), key=lambda i: table[i]["val_uar"])  # first of equals: a fixed rule
    chosen = runs[best]
    # Only now, with the configuration chosen on validation data, are test folds read.
    models = fold_models(chosen.dir, fs, folds=chosen.folds_n, seed=chosen.seed, split=chosen.split)
    results, _ = evaluate(fs, models)
    test = summarize(results, corpus=fs.corpus, labels=fs.labels, split=chosen.split, seed=chosen.seed)
    out = {"space": space, "trials": table, "best": {"trial": chosen.dir.name, "params": chosen.params,
                                                     "val_uar": table[best]["val_uar"],
                                                     "train_config": asdict(chosen.config)},
           "test": test}
    _write_csv(sweep_dir / "trials.csv", table)
    write_json(sweep_dir / "sweep.json", out)
    return out


def _cast(value, typ):
    """A sampled value as its config field's type (YAML and draws give floats for integers)."""
    if typ is int and isinstance(value, float):
        if not value.is_integer():
            raise TimnetError(f"{value} is not an integer")
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def format_sweep(out: dict) -> str:
    """The trials table and the chosen configuration's test figures."""
    keys = [k for k in out["trials"][0] if k not in ("trial", "val_uar", "val_uar_std", "val_war")]
    head = f"{'trial':<10} " + " ".join(f"{k:>14}" for k in keys) + f" {'val UAR':>9} {'val WAR':>9}"
    lines = [head]
    for row in out["trials"]:
        vals = " ".join(f"{_short(row[k]):>14}" for k in keys)
        mark = "  <- best" if row["trial"] == out["best"]["trial"] else ""
        lines.append(f"{row['trial']:<10} {vals} {row['val_uar']:>9.4f} {row['val_war']:>9.4f}{mark}")
    t = out["test"]
    lines += ["", f"chosen on validation: {out['best']['trial']}; its test folds, evaluated once: "
                  f"WAR {t['mean_war']:.4f} +- {t['std_war']:.4f}, UAR {t['mean_uar']:.4f} +- {t['std_uar']:.4f}"]
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
