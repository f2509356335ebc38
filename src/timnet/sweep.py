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
it alone (`Run(evaluate_test=False)`). Only when every trial is done are test folds read: each
fold's test split once, by the trial that did best on that fold's validation share (see run_sweep).
A trial whose loss became NaN in a fold is recorded as diverged there: chosen in no fold where
it diverged, nor as the configuration for a final model.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import load_checkpoint
from .errors import ConfigurationChanged, TimnetError
from .evaluate import FoldModel, evaluate, summarize
from .features import FeatureSet
from .files import write_csv, write_json
from .model import TIMNetConfig
from .processes import torch_threads
from .run import SEEDS_FILE, Run, execute_runs, remove_run
from .rundir import RUN_FILE, diverged_words, fold_dirs, read_fold_result
from .train import TrainConfig, check_seed, preset_swa_epochs

MODEL_PARAMS = ("dropout",)
KINDS = ("choice", "uniform", "loguniform", "randint", "grid")


# TrainConfig fields a space may not set, and why (said to a space that sets one). Adam's settings:
# a chosen value could not be trained into a final model.
_WHY_UNSEARCHED = {
    "recipe": "a preset, not a value: give --recipe",
    "val_fraction": "every trial is scored on the same validation shares: give --val-fraction",
    "save_every": "it changes no figure: give --save-every",
    **{n: "the paper's Adam setting, which timnet train does not change" for n in ("beta1", "beta2", "adam_eps")},
    "adam_eps_rule": "how to read the paper's Adam epsilon, not a hyper-parameter: give --adam-eps-rule",
}
UNSEARCHED = tuple(_WHY_UNSEARCHED)


def train_params() -> tuple[str, ...]:
    """TrainConfig fields a space may set: those `timnet train` has an option for."""
    return tuple(f.name for f in fields(TrainConfig) if f.name not in UNSEARCHED)


def load_space(path: str | Path) -> dict:
    """Read and check a SPACE file (YAML or JSON)."""
    if not str(path).strip():  # Path("") is the current folder
        raise TimnetError("--space '': empty path; expected a YAML or JSON search space file")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TimnetError(f"{path}: cannot read the search space ({e.strerror})") from None
    except UnicodeDecodeError:
        raise TimnetError(f"{path}: not a text file; expected a YAML or JSON search space") from None
    try:
        space = json.loads(text, object_pairs_hook=_unique_keys) if path.suffix == ".json" else _load_yaml(text)
    except Exception as e:  # yaml and json raise many types for a malformed file
        raise TimnetError(f"{path}: not a valid search space file ({_problem(e)})") from None
    space = _numbers(space)
    check_space(space, source=str(path))
    return space


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """A mapping that names a key twice (`lr: 0.001` then `lr: 0.002`) is an error, not the last value."""
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise _DuplicateKey(f"{twice!r} given twice")
    return dict(pairs)


def _load_yaml(text: str):
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            mapping = super().construct_mapping(node, deep=deep)  # refuses keys that cannot be keys first
            _unique_keys([(self.construct_object(k, deep=True), None) for k, _ in node.value])
            return mapping

    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader: data only)


def _problem(e: Exception) -> str:
    """What a parser objected to, and where in the file when it says."""
    if isinstance(e, _DuplicateKey):
        return str(e)
    mark = getattr(e, "problem_mark", None)
    if mark is not None:  # yaml's marks count from 0
        return f"{type(e).__name__} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(e, json.JSONDecodeError):
        return f"{type(e).__name__} at line {e.lineno}, column {e.colno}"
    return type(e).__name__


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


def _is_bound(a, *, integer: bool) -> bool:
    """A distribution's bound: a finite number (not a bool, an int to Python; not a string, which
    compares too); an integer bound may be written 100.0, but must fit numpy's int64 draws."""
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        return False
    if isinstance(a, int):  # math.isfinite(10**400) would overflow
        return abs(a) < (2**62 if integer else 1e308)
    return math.isfinite(a) and (not integer or (a.is_integer() and abs(a) < 2**62))


def check_space(space, *, source: str = "space") -> None:
    """Every key a known parameter, every distribution well formed."""
    if not isinstance(space, dict) or not space:
        raise TimnetError(f"{source}: expected a mapping of parameters to values or distributions")
    known = (*train_params(), *MODEL_PARAMS)
    for name, spec in space.items():
        if name in UNSEARCHED:
            raise TimnetError(f"{source}: {name} is not searched ({_WHY_UNSEARCHED[name]})")
        if name not in known:
            raise TimnetError(f"{source}: unknown parameter {name!r}; expected one of {', '.join(known)}")
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise TimnetError(f"{source}: {name}: expected one of {', '.join(KINDS)} with its arguments")
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise TimnetError(f"{source}: {name}: {kind} needs a list of one or more values; got {args!r}")
            if kind in ("uniform", "loguniform", "randint"):
                if len(args) != 2 or not all(_is_bound(a, integer=kind == "randint") for a in args):
                    raise TimnetError(f"{source}: {name}: {kind} needs [low, high], two finite "
                                      f"{'integers below 2**62' if kind == 'randint' else 'numbers'}; got {args}")
                if not args[0] < args[1] or not math.isfinite(float(args[1]) - float(args[0])):
                    raise TimnetError(f"{source}: {name}: {kind} needs [low, high] with low < high, a finite range")
            if kind == "loguniform" and args[0] <= 0:
                raise TimnetError(f"{source}: {name}: loguniform needs a positive low bound")
        _check_values(name, spec, source)


def _check_values(name: str, spec, source: str) -> None:
    """Every value `spec` can give `name` valid, whatever the draws: each listed value, a range's
    two ends (checked by the configs themselves, so that the space and `timnet train` agree)."""
    typ = _field_type(name)
    kind, values = (next(iter(spec.items())) if isinstance(spec, dict) else (None, [spec]))
    if typ is str and kind in ("uniform", "loguniform", "randint"):
        raise TimnetError(f"{source}: {name}: takes a name; expected a value, choice or grid")
    if typ is int and kind in ("uniform", "loguniform"):
        raise TimnetError(f"{source}: {name}: takes whole numbers; expected randint, choice, grid or a value")
    expected = {str: "a name", int: "a whole number below 2**62", float: "a finite number"}[typ]
    for value in values:
        if value is None and name == "patience":  # never stop early: the default
            continue
        if not (isinstance(value, str) if typ is str else _is_bound(value, integer=typ is int)):
            raise TimnetError(f"{source}: {name}: {value!r} invalid; expected {expected}")
        try:
            _probe(name, _cast(value, typ))
        except TimnetError as e:
            raise TimnetError(f"{source}: {name}: {e}") from None


def _field_type(name: str) -> type:
    """The type of a searchable parameter's values."""
    if name in MODEL_PARAMS:
        return float
    return int if name == "patience" else type(getattr(TrainConfig, name))  # patience's default is None


def _probe(name: str, value) -> None:
    """Build the config with `value` alone changed; the others set so that no rule between two
    options (warm-up within the epochs, masks with a width, best-val with validation) objects."""
    if name in MODEL_PARAMS:
        TIMNetConfig(**{name: value})
        return
    around = {"val_fraction": 0.2}
    if name in ("warmup_epochs", "swa_epochs"):
        around["epochs"] = max(1, value)
    if name in ("time_masks", "freq_masks"):
        around[f"{name[:-1]}_width"] = 1
    if name == "plain_members":
        around["members"] = max(1, value + 1)
    TrainConfig(**{**around, name: value})


def first_trial(space: dict, *, trials: int, seed: int) -> dict:
    """The training options the sweep's first trial sets, as its run takes them: the command line's
    options are checked beside them, since some are valid only with a space's value
    (`--plain-members 1` beside `members: {grid: [2, 3]}`); each trial's whole config is checked
    again as its run is made."""
    params = sample_trials(space, trials=trials, seed=seed)[0]
    return {k: _cast(v, _field_type(k)) for k, v in params.items() if k in train_params()}


def sample_trials(space: dict, *, trials: int, seed: int) -> list[dict]:
    """Parameter sets: the grid's product, each with `trials` seeded random draws of the rest.

    A set drawn twice (a grid with only fixed values, or a small `choice`) is kept once: a trial
    is a whole cross-validated run, and the same seed would only repeat it.
    """
    if trials < 1:
        raise TimnetError(f"--trials {trials} invalid; expected a positive number")
    rng = np.random.default_rng(check_seed(seed))
    grid_keys = [k for k, v in space.items() if isinstance(v, dict) and "grid" in v]
    grid = list(itertools.product(*(space[k]["grid"] for k in grid_keys))) or [()]
    out, seen = [], set()
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
                    params[name] = int(rng.integers(int(args[0]), int(args[1]) + 1))
            key = tuple(sorted(params.items()))
            if key not in seen:
                seen.add(key)
                out.append(params)
    return out


RunFactory = Callable[[Path, TrainConfig, dict], Run]  # (folder, training config, model overrides) -> Run


def trial_runs(sweep_dir: str | Path, params_list: list[dict], *, base: TrainConfig, make_run: RunFactory,
               overwrite: bool = False, names: list[str] | None = None, swa_follows_epochs: bool = True) -> list[Run]:
    """One prepared validation-only Run per parameter set, in SWEEP_DIR/trial_NNN (or SWEEP_DIR/<name>).

    A trial that sets epochs gets the recipe's own averaging window for them (the last fifth) where
    `base` has the recipe's window, unless `swa_follows_epochs` is False: the user gave --swa-epochs,
    whatever its value (--swa-epochs 100 at 500 epochs is also the preset's)."""
    runs = []
    for i, params in enumerate(params_list, start=1):
        folder = names[i - 1] if names else f"trial_{i:03d}"
        try:
            params = {k: _cast(v, _field_type(k)) for k, v in params.items()}
            changes = {k: v for k, v in params.items() if k in train_params()}
            if (swa_follows_epochs and "epochs" in changes and "swa_epochs" not in changes and base.swa_epochs
                    and base.swa_epochs == preset_swa_epochs(base.recipe, base.epochs)):
                # the recipe's own averaging window (the last fifth) follows the trial's epochs
                changes["swa_epochs"] = preset_swa_epochs(base.recipe, changes["epochs"])
            config = replace(base, **changes)
            run = make_run(Path(sweep_dir) / folder, config, {k: v for k, v in params.items() if k in MODEL_PARAMS})
        except (TypeError, TimnetError) as e:
            raise TimnetError(f"{folder} ({params}): {e}") from None
        if run.evaluate_test:
            raise TimnetError("trial runs must be validation-only (Run(evaluate_test=False))")  # a caller's bug
        run.params = params
        runs.append(run)
    if not names:  # a search space's option that no trial's figures depend on would only repeat trials
        for name in params_list[0] if params_list else ():
            reasons = [run.config.inert().get(name) for run in runs]
            if all(reasons):
                raise TimnetError(f"{name} changes no figure in any trial ({reasons[0]}); expected it left out of the "
                                  "space, or the option it depends on set too")
    for run in runs:  # only once every trial is known to be valid: --overwrite deletes
        try:
            run.prepare(overwrite=overwrite)
        except ConfigurationChanged as e:
            if names:  # a named candidate's folder: the run's own message says it
                raise
            raise TimnetError(_other_trial(run.dir, e)) from None
    if overwrite and not names:  # an earlier sweep's extra trials would be read as this one's
        keep = {run.dir.name for run in runs}
        for old in _trial_dirs(sweep_dir):
            if old.name not in keep and (old / RUN_FILE).is_file():
                remove_run(old)  # timnet's files: a note of the user's in it stays
        for summary in ("sweep.json", "trials.csv"):  # the earlier sweep's, whose trials are gone
            (Path(sweep_dir) / summary).unlink(missing_ok=True)
    return runs


def _other_trial(folder: Path, e: ConfigurationChanged) -> str:
    """The run layer's refusal of a trial folder, in a sweep's words."""
    changed = ", ".join(e.changed)
    if all(k == "seed" or k.startswith(("train_config.", "model_config.")) for k in e.changed):
        # trials are numbered in draw order: another space, training option, --trials (with a
        # grid) or --seed puts other values behind the same trial_NNN
        return (f"{folder} holds a trial of another sweep ({changed} differ{'s' * (len(e.changed) == 1)}: another space "
                "or training options, --trials or --seed); use another SWEEP_DIR, that sweep's options, or --overwrite "
                "(which deletes its trials)")
    return (f"{folder} holds a trial run with a different configuration ({changed}); use another SWEEP_DIR or "
            f"--overwrite (which deletes its trials){e.hint}")


def _trial_dirs(sweep_dir: str | Path) -> list[Path]:
    """The trial_NNN folders in SWEEP_DIR, by name: only names a sweep writes (not trial_001_old)."""
    return sorted(p for p in Path(sweep_dir).glob("trial_*") if re.fullmatch(r"trial_\d+", p.name) and p.is_dir())


def run_sweep(fs: FeatureSet, sweep_dir: str | Path, *, space: dict, trials: int, base: TrainConfig, backend,
              seed: int, make_run: RunFactory, progress: bool = True, log=print, overwrite: bool = False,
              swa_follows_epochs: bool = True) -> dict:
    """Train every trial's folds on validation data only; then, for each fold, the trial with the best
    validation UAR on *that fold's* validation share is evaluated on that fold's test split, once.

    Choosing per fold keeps the test estimate clean: a single choice by the mean over folds would
    rest on validation shares of other folds, which hold this fold's test utterances. The trial
    with the best mean validation UAR is reported as the configuration to train a final model with.
    """
    sweep_dir = Path(sweep_dir)
    for marker in (RUN_FILE, SEEDS_FILE):
        if (sweep_dir / marker).is_file():
            raise TimnetError(f"{sweep_dir} holds a training run ({marker}); a sweep writes trial_NNN/ runs: "
                              "give another SWEEP_DIR")
    if base.val_fraction == 0:
        raise TimnetError("a sweep scores trials on validation data: give --val-fraction (e.g. 0.2)")
    made = [*_trial_dirs(sweep_dir), *(sweep_dir / name for name in ("sweep.json", "trials.csv") if (sweep_dir / name).is_file())]
    if not made and not overwrite and sweep_dir.is_dir() and any(not p.name.startswith(".") for p in sweep_dir.iterdir()):
        raise TimnetError(f"{sweep_dir} exists and is not a timnet SWEEP_DIR; expected an empty or new folder (or "
                          "--overwrite, which adds the trials beside what it holds)")
    params_list = sample_trials(space, trials=trials, seed=seed)
    runs = trial_runs(sweep_dir, params_list, base=base, make_run=make_run, overwrite=overwrite,
                      swa_follows_epochs=swa_follows_epochs)
    ours = {run.dir.name for run in runs}
    others = [p.name for p in _trial_dirs(sweep_dir) if p.name not in ours and (p / RUN_FILE).is_file()]
    if others:
        log(f"{sweep_dir}: {', '.join(others)} {'is' if len(others) == 1 else 'are'} not of this sweep's "
            f"{len(runs)} trial{'s' * (len(runs) != 1)}, left as {'it is' if len(others) == 1 else 'they are'}; "
            "--overwrite removes them")
    _refuse_folds_without_models(runs)
    if note := optimism_note(runs):
        warnings.warn(note, stacklevel=2)
    summaries = execute_runs(runs, backend=backend, progress=progress, log=log)
    table = [{"trial": run.dir.name, **run.params, "val_uar": s["mean_val_uar"], "val_uar_std": s["std_val_uar"],
              "val_war": s["mean_val_war"]} for run, s in zip(runs, summaries)]
    # A trial whose loss became NaN in a fold has no model there, and no mean to be the configuration
    # for a final model by (its learning rate, or another setting, is unstable on this data). Each
    # fold still chooses among the trials that converged on it alone: leaving out a trial for what
    # it did on another fold would let that fold's training part, which holds this fold's test
    # utterances, take part in this fold's choice.
    lost = {i: s["diverged_folds"] for i, s in enumerate(summaries) if s.get("diverged_folds")}
    for i, folds in lost.items():
        log(f"{runs[i].dir.name}: {diverged_words(folds)}: chosen in no fold where it did, nor as the configuration "
            "for a final model")
    usable = [i for i in range(len(runs)) if i not in lost]
    if not usable:
        raise TimnetError(f"every trial of {sweep_dir} diverged in some fold (the loss became NaN or infinite), so none "
                          "is a configuration for a final model; expected a space "
                          "with lower learning rates (lr) or milder settings")
    best = max(usable, key=lambda i: table[i]["val_uar"])  # first of equals: a fixed rule
    # Only now, every choice made on validation data, are test folds read: one model per fold.
    results = []
    for k in range(1, runs[0].folds_n + 1):
        per_trial = {i: f["val_uar"] for i, s in enumerate(summaries) for f in s["folds"] if f["fold"] == k
                     and not f.get("diverged")}
        pick = max(per_trial, key=lambda i: per_trial[i])  # in trial order: the first of equals
        model, ckpt = load_checkpoint(runs[pick].fold_dir(k) / "model.pt")
        test_idx = np.asarray(ckpt["extra"]["test_idx"], dtype=np.int64)
        with torch_threads(runs[pick].threads):  # scored as its trial's folds are, wherever they trained
            result, _ = evaluate(fs, [FoldModel(k, model, test_idx)])
        results.append({**result[0], "trial": runs[pick].dir.name, "val_uar": per_trial[pick]})
    test = summarize(results, corpus=fs.corpus, labels=fs.labels, split=runs[0].split, seed=runs[0].seed)
    out = {"space": space, "trials": table,
           "best": {"trial": runs[best].dir.name, "params": runs[best].params, "val_uar": table[best]["val_uar"],
                    "train_config": asdict(runs[best].config)},
           "test": test}
    write_csv(sweep_dir / "trials.csv", table)
    write_json(sweep_dir / "sweep.json", out)
    return out


def optimism_note(runs: list[Run]) -> str | None:
    """A `best-val` trial is scored on the validation share that chose its epoch: its figure is
    the best of its looks at that share, not an estimate, and more looks make it higher. Among
    trials alike in that, the choice is fair; between a `best-val` trial and a `last` one, or
    `best-val` trials looking more or less often (eval_every) or long (patience), it leans
    towards the more optimistic figure. Said, not refused: such a search is the user's to make."""
    configs = [run.config for run in runs]
    if not any(c.select == "best-val" for c in configs):
        return None
    differ = [name for name in ("select", "eval_every", "patience") if len({getattr(c, name) for c in configs}) > 1]
    if not differ:
        return None
    return (f"the trials differ in {', '.join(differ)}: a best-val trial's validation figure is the best of its looks "
            "at the share that chose its epoch, so trials that look more (or that pick their epoch against ones that "
            "do not) score higher for it, and each fold's choice leans towards them; fix "
            f"{' and '.join('--' + n.replace('_', '-') for n in differ)} for a fair comparison")


def _refuse_folds_without_models(runs: list[Run]) -> None:
    """A finished trial fold whose model.pt is gone (deleted to save space) counts as done, yet the
    sweep's end tests each fold's chosen model: said before hours of training, with what to do."""
    bare = [d for run in runs for d in fold_dirs(run.dir) if (d / "result.json").is_file()
            and not (d / "model.pt").is_file() and not read_fold_result(d / "result.json").get("diverged")]
    if bare:
        more = f" (so have {len(bare) - 1} other trial folds)" if len(bare) > 1 else ""
        raise TimnetError(f"{bare[0] / 'model.pt'}: missing, though its result.json says the fold is finished{more}; "
                          "the sweep tests each fold's chosen model at its end: delete the result.json of each such "
                          "fold and run the same `timnet sweep` to train it again")


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
        if row["val_uar"] is None:
            lines.append(f"{row['trial']:<10} {vals} {'diverged':>9} {'-':>9}")
            continue
        mark = "  <- best" if row["trial"] == out["best"]["trial"] else ""
        lines.append(f"{row['trial']:<10} {vals} {row['val_uar']:>9.4f} {row['val_war']:>9.4f}{mark}")
    t = out["test"]
    picks = ", ".join(f"{f['fold']}: {f['trial']}" for f in t["folds"])
    lines += ["", f"configuration for a final model (best mean validation UAR): {out['best']['trial']}",
              f"test folds, each evaluated once with the trial its own validation share chose ({picks}):",
              f"WAR {t['mean_war']:.4f} +- {t['std_war']:.4f}, UAR {t['mean_uar']:.4f} +- {t['std_uar']:.4f}"]
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
