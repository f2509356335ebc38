"""Training of one fold: the paper's recipe (SPEC.md §4), honest model selection, resumable state.

The test split of a fold is never seen here: `train_fold` gets only training (and validation)
indices, and the caller evaluates the chosen model on the test split once, afterwards.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import dispatch, metrics, recipe
from .errors import Diverged, TimnetError
from .files import damaged_record, save_torch
from .model import TIMNet, TIMNetConfig, TIMNetEnsemble, ensemble

SELECTIONS = ("last", "best-val")
PATHS = ("auto", "fast", "reference")
ADAM_EPS_RULES = ("torch", "keras")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's numbers (and `save_every`, which does not: a run resumes
    whatever it is now); saved in the run and in every checkpoint."""

    epochs: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    beta1: float = 0.93
    beta2: float = 0.98
    adam_eps: float = 1e-8
    # "torch": eps added to sqrt of the bias-corrected second moment (PyTorch, SPEC.md §4); "keras": to
    # sqrt of the uncorrected one, as the authors' Keras Adam does ("epsilon hat"): in PyTorch's terms
    # eps / sqrt(1 - beta2^t), 7.1e-8 at the first step, 1e-8 after a few hundred
    adam_eps_rule: str = "torch"
    label_smoothing: float = 0.1  # on training labels only
    val_fraction: float = 0.0  # validation carved from each fold's training part (stratified; whole speakers with --split speaker)
    eval_every: int = 1  # epochs between validation passes (when there is validation)
    select: str = "last"  # "last" (the paper) or "best-val" (best validation UAR)
    patience: int | None = None  # stop after this many epochs without a better validation UAR (counted in
    # validation passes: rounded up to a multiple of eval_every)
    save_every: int = 10  # epochs between resumable snapshots
    # Beyond the paper (timnet.recipe); every default is the paper's recipe.
    recipe: str = "paper"  # the preset the values below came from (a label)
    lr_schedule: str = "constant"  # or "cosine" (to 1% of lr at the last epoch)
    warmup_epochs: int = 0  # linear warm-up of the learning rate
    ema_decay: float = 0.0  # > 0: keep the exponential moving average of the weights (per step)
    swa_epochs: int = 0  # > 0: the fold's model is the mean of the weights after each of the last N epochs
    time_shift: int = 0  # random circular shift of up to this many frames
    time_masks: int = 0  # masks of up to time_mask_width frames per utterance
    time_mask_width: int = 0
    freq_masks: int = 0  # masks of up to freq_mask_width MFCC coefficients per utterance
    freq_mask_width: int = 0
    tempo: float = 0.0  # > 0: each utterance's tempo scaled by a factor in [1 - tempo, 1 + tempo]
    vtlp: float = 0.0  # > 0: vocal-tract length perturbation, warp factors in [1 - vtlp, 1 + vtlp]
    gain: float = 0.0  # > 0: each utterance as if recorded up to this many dB louder or quieter
    mixup_alpha: float = 0.0  # > 0: mixup with Beta(alpha, alpha)
    members: int = 1  # > 1: models per fold from other initialisations; the fold's model averages their probabilities
    plain_members: int = 0  # the first N members train without augmentation, the others with it (a mixed ensemble)

    def __post_init__(self):
        if self.recipe not in recipe.RECIPES:
            raise TimnetError(f"--recipe {self.recipe!r} unknown; expected one of {', '.join(recipe.RECIPES)}")
        if self.lr_schedule not in recipe.SCHEDULES:
            raise TimnetError(f"--lr-schedule {self.lr_schedule!r} unknown; expected one of {', '.join(recipe.SCHEDULES)}")
        if not 0 <= self.ema_decay < 1:
            raise TimnetError(f"--ema-decay {self.ema_decay} invalid; expected 0 (off) <= D < 1")
        for name in ("warmup_epochs", "swa_epochs", "time_shift", "time_masks", "time_mask_width", "freq_masks", "freq_mask_width"):
            if getattr(self, name) < 0:
                raise TimnetError(f"--{name.replace('_', '-')} {getattr(self, name)} invalid; expected 0 or more")
        for axis in ("time", "freq"):  # a mask of width 0 masks nothing, yet its draws change the run
            if getattr(self, f"{axis}_masks") and not getattr(self, f"{axis}_mask_width"):
                raise TimnetError(f"--{axis}-masks {getattr(self, f'{axis}_masks')} needs --{axis}-mask-width W "
                                  "(at least 1); masks of width 0 mask nothing")
        if not 0 < self.lr < math.inf:  # inf turns every weight into NaN at the first step
            raise TimnetError(f"--lr {self.lr} invalid; expected a positive, finite learning rate")
        if not 0 <= self.label_smoothing < 1:
            raise TimnetError(f"--label-smoothing {self.label_smoothing} invalid; expected 0 <= S < 1")
        for name in ("tempo", "vtlp"):
            if not 0 <= getattr(self, name) < 0.5:
                raise TimnetError(f"--{name} {getattr(self, name)} invalid; expected 0 (off) <= R < 0.5")
        if not 0 <= self.gain <= 40:
            raise TimnetError(f"--gain {self.gain} invalid; expected 0 (off) <= DB <= 40")
        if not 0 <= self.mixup_alpha < math.inf:
            raise TimnetError(f"--mixup-alpha {self.mixup_alpha} invalid; expected 0 (off) or more, finite")
        if self.adam_eps_rule not in ADAM_EPS_RULES:
            raise TimnetError(f"--adam-eps-rule {self.adam_eps_rule!r} unknown; expected one of {', '.join(ADAM_EPS_RULES)}")
        if self.select not in SELECTIONS:
            raise TimnetError(f"--select {self.select!r} unknown; expected one of {', '.join(SELECTIONS)}")
        if not 0 <= self.val_fraction < 1:
            raise TimnetError(f"--val-fraction {self.val_fraction} invalid; expected 0 <= F < 1")
        if (self.select == "best-val" or self.patience is not None) and self.val_fraction == 0:
            raise TimnetError("--select best-val and --patience need validation data; give --val-fraction (e.g. 0.1)")
        for name in ("epochs", "batch_size", "eval_every", "save_every", "members"):
            if getattr(self, name) < 1:
                raise TimnetError(f"--{name.replace('_', '-')} {getattr(self, name)} invalid; expected a positive number")
        if self.plain_members < 0 or (self.plain_members and self.plain_members >= self.members):
            raise TimnetError(f"--plain-members {self.plain_members} invalid; expected 0 or more and fewer than "
                              f"--members ({self.members}): the first N members train without augmentation, the others with it")
        if self.warmup_epochs > self.epochs:
            raise TimnetError(f"--warmup-epochs {self.warmup_epochs} invalid; expected at most --epochs ({self.epochs}), "
                              "or the learning rate never reaches --lr")
        if self.patience is not None and self.patience < 1:
            raise TimnetError(f"--patience {self.patience} invalid; expected a positive number of epochs")
        if self.swa_epochs:
            if self.swa_epochs > self.epochs:
                raise TimnetError(f"--swa-epochs {self.swa_epochs} invalid; expected at most --epochs ({self.epochs})")
            # a preset that averages: say which option turns its averaging off
            preset = next((f" (--recipe {self.recipe} sets --{n.replace('_', '-')}: add --{n.replace('_', '-')} 0"
                           + (f"; it also trains {self.members} members per fold, --members 1 trains one"
                              if self.members > 1 and recipe.RECIPES[self.recipe].get("members") else "") + ")"
                           for n in ("ema_decay", "swa_epochs") if recipe.RECIPES[self.recipe].get(n)), "")
            if self.ema_decay > 0:
                raise TimnetError(f"--swa-epochs and --ema-decay are two ways to average the weights; choose one{preset}")
            # the average exists only after the last epoch: there is no epoch to pick, nor stop at
            if self.select == "best-val" or self.patience is not None:
                raise TimnetError("--swa-epochs averages the last epochs; it cannot go with --select best-val "
                                  f"or --patience{preset}")

    def inert(self) -> dict[str, str]:
        """Options whose value changes no figure of this config, each with the reason: a sweep over
        one of them would train the same trial again and again."""
        out = {}
        for axis in ("time", "freq"):
            if not getattr(self, f"{axis}_masks"):
                out[f"{axis}_mask_width"] = f"no --{axis}-masks"
        if self.val_fraction == 0:
            out["eval_every"] = "no validation share"
        elif self.select == "last" and self.patience is None:
            out["eval_every"] = "the last epoch's weights are kept and nothing stops early: validation only reports"
        if self.members == 1 or all(getattr(self, name) == getattr(TrainConfig, name) for name in recipe.AUGMENTATIONS):
            out["plain_members"] = "one member" if self.members == 1 else "no augmentation on: every member trains alike"
        return out

    def for_member(self, m: int) -> TrainConfig:
        """The config member m trains with: the first `plain_members` without any augmentation, so that
        they are, to every digit, the members of the same run without augmentation."""
        if m >= self.plain_members:
            return self
        return replace(self, **{name: getattr(TrainConfig, name) for name in recipe.AUGMENTATIONS})

    def check_fits(self, frames: int, n_mfcc: int) -> None:
        """Augmentation sizes within the features' (frames, n_mfcc): beyond them a shift wraps round
        to a smaller one and a mask covers the whole utterance, which no one means."""
        for name, value, limit, what in (("time_shift", self.time_shift, frames - 1, "frames - 1"),
                                         ("time_mask_width", self.time_mask_width, frames, "frames"),
                                         ("freq_mask_width", self.freq_mask_width, n_mfcc, "MFCC coefficients")):
            if value > limit:
                raise TimnetError(f"--{name.replace('_', '-')} {value} invalid; expected at most {limit} "
                                  f"(the features have {frames} frames of {n_mfcc} coefficients; {what})")


def recipe_config(name: str = "paper", **overrides) -> TrainConfig:
    """A TrainConfig from a named preset (timnet.recipe.RECIPES), with explicit values on top.

    A preset's SWA window follows an explicit --epochs (preset_swa_epochs), so that
    `--recipe strong --epochs 50` averages the last 10 epochs rather than failing; an explicit
    --swa-epochs is taken as given."""
    preset = dict(recipe.RECIPES.get(name, {}))
    if preset.get("swa_epochs"):
        preset["swa_epochs"] = preset_swa_epochs(name, overrides.get("epochs", TrainConfig.epochs))
    return TrainConfig(**{**preset, "recipe": name, **overrides})  # TrainConfig checks the name


def preset_swa_epochs(name: str, epochs: int) -> int:
    """The SWA window preset `name` gives a training of `epochs` epochs: the last fifth (100 of the
    paper's 500), at least one epoch; 0 for a preset that does not average."""
    return max(1, epochs // recipe.SWA_SHARE) if recipe.RECIPES.get(name, {}).get("swa_epochs") else 0


def validation_split(train_idx: np.ndarray, y: np.ndarray, *, fraction: float, seed: int,
                     groups: np.ndarray | None = None, labels: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training indices into (train, validation), stratified by class.

    With `groups` (speakers, for speaker-independent folds) whole speakers go to validation, so
    that model selection is scored on unseen speakers, as the test fold will be: drawn at random,
    not stratified (acted corpora give every speaker every class; where one does not, the run
    says which class is left with nothing to train on, Run._warn_untaught_classes).
    """
    if fraction == 0:
        return train_idx, np.empty(0, dtype=np.int64)
    if groups is not None:
        return _group_validation_split(train_idx, groups, fraction=fraction, seed=seed)
    from sklearn.model_selection import StratifiedShuffleSplit

    part = y[train_idx]

    def name(c) -> str:
        return str(labels[c]) if labels is not None else f"class {c}"

    n_val = max(int(round(fraction * len(train_idx))), len(np.unique(part)))
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed % 2**32)  # a fold seed may exceed it
    try:
        tr, va = next(splitter.split(np.zeros(len(train_idx)), part))
    except ValueError:  # a class too small to appear on both sides, or a part too small for every class
        classes, counts = np.unique(part, return_counts=True)
        single = [name(c) for c, n in zip(classes, counts) if n < 2]
        what = (f"{', '.join(single)}: one utterance in this training part, where each class needs one on either side"
                if single else f"{n_val} of this training part's {len(train_idx)} utterances for validation leave "
                               f"{len(train_idx) - n_val} to train on, fewer than its {len(classes)} classes")
        # (not fewer --folds: they make each training part smaller)
        fix = "--val-fraction 0" if single else "a smaller --val-fraction (or 0)"
        raise TimnetError(f"--val-fraction {fraction}: {what}; expected {fix}, or more data") from None
    # the split rounds each class's share, and a large fraction can take a small class whole
    if gone := sorted(set(part.tolist()) - set(part[tr].tolist())):
        raise TimnetError(f"--val-fraction {fraction}: every {', '.join(map(name, gone))} utterance of this training part goes to "
                          "validation, leaving none to train on; use a smaller --val-fraction")
    return np.sort(train_idx[tr]), np.sort(train_idx[va])


def _group_validation_split(train_idx: np.ndarray, groups: np.ndarray, *, fraction: float,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) with whole groups in validation: about `fraction` of the groups, at least one."""
    names = np.unique(groups[train_idx])
    if len(names) < 2:
        raise TimnetError(f"--val-fraction {fraction}: a speaker-independent validation set needs at least two "
                          f"training speakers; this fold has {len(names)}")
    n_val = min(max(int(round(fraction * len(names))), 1), len(names) - 1)
    chosen = np.random.default_rng(seed).choice(names, size=n_val, replace=False)
    va = np.isin(groups[train_idx], chosen)
    return np.sort(train_idx[~va]), np.sort(train_idx[va])


@torch.no_grad()
def evaluate_split(model: TIMNet, x: torch.Tensor, y: torch.Tensor, *, n_classes: int, batch_size: int = 512) -> dict:
    """Loss (plain cross-entropy), WAR and UAR of a model on a labelled split."""
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    cm = metrics.confusion_matrix(y.cpu().numpy(), logits.argmax(1).cpu().numpy(), n_classes=n_classes)
    return {"loss": float(F.cross_entropy(logits, y)), "war": metrics.war(cm), "uar": metrics.uar(cm)}


class FoldState:
    """What a fold's training needs to continue after an interruption, and to be saved atomically."""

    def __init__(self, model: TIMNet, optimizer: torch.optim.Optimizer, generator: torch.Generator, ema=None,
                 swa=None):
        self.model, self.optimizer, self.generator, self.ema, self.swa = model, optimizer, generator, ema, swa
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best: dict | None = None  # {"epoch", "uar", "state_dict"} under best-val
        self.since_best = 0
        self.stopped_early = False
        self.seconds = 0.0  # training wall time, summed over the calls of a resumed training
        # What decided the bits of every process that trained it (timnet.dispatch.state): a resumed
        # training may have begun on another machine, and a member's result should say so.
        self.machines: list[dict] = [dispatch.state()]
        self.arithmetic: str | None = None  # what computes the numbers (train_fold sets it); a resume: each in turn

    def to_dict(self) -> dict:
        device = next(self.model.parameters()).device
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            # the training GPU's generator (dropout masks), not the current device's
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "epoch": self.epoch, "history": self.history, "best": self.best,
            "since_best": self.since_best, "stopped_early": self.stopped_early, "seconds": self.seconds,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "cpu_dispatch": self.machines, "arithmetic": self.arithmetic,
        }

    def load_dict(self, d: dict) -> None:
        """Restore a snapshot read onto the CPU (generator states must be CPU tensors; the model and
        optimizer copy their tensors to their own device)."""
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.generator.set_state(d["generator"])
        torch.set_rng_state(d["torch_rng"])
        if d.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(d["cuda_rng"], next(self.model.parameters()).device)
        self.epoch, self.history, self.best = d["epoch"], d["history"], d["best"]
        self.since_best, self.stopped_early = d["since_best"], d["stopped_early"]
        self.seconds = d.get("seconds", 0.0)  # older versions' snapshots kept no time
        self.machines = distinct([*d.get("cpu_dispatch", []), *self.machines])  # older ones: none recorded
        if self.ema is not None:
            self.ema.load_state_dict(d["ema"])
        if self.swa is not None:
            self.swa.load_state_dict(d["swa"])

    def save(self, path: Path) -> None:
        save_torch(self.to_dict(), path)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:[0-9]+", name):
        raise TimnetError(f"--device {name!r} unknown; expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TimnetError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise TimnetError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def resolve_path(name: str, device: str | torch.device) -> str:
    """`auto` is the fast path on CPUs and the reference modules on CUDA (cuDNN's convolutions)."""
    if name not in PATHS:
        raise TimnetError(f"--path {name!r} unknown; expected one of {', '.join(PATHS)}")
    if name == "auto":
        return "reference" if torch.device(device).type == "cuda" else "fast"
    return name


def fold_seed(seed: int, fold: int) -> int:
    """Each fold's own seed, so a fold's numbers do not depend on which folds ran before it."""
    return seed * 1000 + fold


MAX_SEED = 2**32 - 1  # numpy's and sklearn's range; fold seeds are taken modulo 2**32 where they need it


def check_seed(seed: int) -> int:
    """A seed every fold seed of which numpy and sklearn accept, or one error naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise TimnetError(f"--seed {seed} invalid; expected an integer from 0 to {MAX_SEED}")
    return int(seed)


def train_fold(
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    model_config: TIMNetConfig,
    config: TrainConfig,
    seed: int,
    state_path: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    path: str = "fast",
) -> tuple[TIMNet, FoldState]:
    """Train one fold's model on `train_idx`, validating on `val_idx`; returns the chosen model (on the CPU).

    With `state_path`, a snapshot is saved every `save_every` epochs and training resumes from
    it when it exists; the result equals an uninterrupted run's. `path` is "fast" (timnet.fast,
    the same mathematics computed faster) or "reference" (the nn.Module itself).
    """
    from . import fast

    device = torch.device(device)
    torch.manual_seed(seed)
    model = TIMNet(model_config).to(device)  # initialised on the CPU RNG, so every device starts alike
    use_fast = resolve_path(path, device) == "fast"
    if use_fast and not fast.supports(model):
        raise TimnetError(f"--path fast needs kernel size 2 (this model has {model_config.kernel_size}); use --path reference")
    net = (lambda xb: fast.forward(model, xb)) if use_fast else model
    # what computes the numbers (recorded with each fold: the last float bits depend on it)
    arithmetic = fast.ops_for(x[:1].to(device), fast.padded(model_config.n_filters)).name if use_fast else "reference"
    optimizer = _adam(model, config, fused=use_fast)
    if use_fast and not optimizer.defaults.get("fused"):  # said with the arithmetic: a resume under a torch
        arithmetic += " with unfused Adam"  # that has the fused kernel would round apart, and be warned of
    ema = recipe.EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    swa = recipe.SWA(model) if config.swa_epochs else None
    kept = ema.model if ema is not None else model  # the weights validated each epoch (SWA's exist only at the end)
    # The shuffling generator stays on the CPU: batches are the same whatever the device.
    state = FoldState(model, optimizer, torch.Generator().manual_seed(seed), ema, swa)
    state.arithmetic = arithmetic
    if state_path is not None and state_path.is_file():
        snapshot = load_saved(state_path)
        state.load_dict(snapshot)
        if (began := snapshot.get("arithmetic")) and began.rsplit(", then ", 1)[-1] != arithmetic:
            import warnings

            warnings.warn(f"{state_path}: begun with the {began} arithmetic, resumed with {arithmetic} (TIMNET_NATIVE, "
                          "no C compiler here, or another torch); the weights will differ from an uninterrupted training's", stacklevel=2)
            state.arithmetic = f"{began}, then {arithmetic}"
        elif began:
            state.arithmetic = began

    # The whole training part lives on the device as one contiguous tensor: no per-step host copies.
    x_train, y_train = x[train_idx].to(device), y[train_idx].to(device)
    x_val, y_val = x[val_idx].to(device), y[val_idx].to(device)
    n, bs = len(train_idx), config.batch_size
    steps = -(-n // bs)
    t0, before = time.perf_counter(), state.seconds
    while state.epoch < config.epochs and not state.stopped_early:
        model.train()
        order = torch.randperm(n, generator=state.generator).to(device)
        loss_sum, correct = 0.0, 0
        for i, start in enumerate(range(0, n, bs)):
            idx = order[start : start + bs]
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate(config, state.epoch * steps + i, steps)
                group["eps"] = adam_eps(config, state.epoch * steps + i + 1)
            xb, yb = recipe.augment(x_train[idx], config, state.generator), y_train[idx]
            xb, perm, lam = recipe.mixup(xb, config, state.generator)
            logits = net(xb)
            loss = recipe.loss_fn(logits, yb, perm, lam, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        state.epoch += 1
        if swa is not None and state.epoch > config.epochs - config.swa_epochs:
            swa.update(model)
        row = {"epoch": state.epoch, "loss": loss_sum / n, "acc": correct / n}
        if not np.isfinite(row["loss"]):  # every later epoch and the model would be NaN too
            where = state_path.parent if state_path is not None else "training"
            raise Diverged(f"{where}: the loss is {row['loss']} at epoch {state.epoch}; expected a finite loss "
                              "(check the features, or lower --lr)")
        if len(val_idx) and (state.epoch % config.eval_every == 0 or state.epoch == config.epochs):
            v = evaluate_split(kept, x_val, y_val, n_classes=model_config.n_classes)
            row.update(val_loss=v["loss"], val_war=v["war"], val_uar=v["uar"])
            if state.best is None or v["uar"] > state.best["uar"]:
                state.best = {"epoch": state.epoch, "uar": v["uar"], "state_dict": copy.deepcopy(kept.state_dict())}
                state.since_best = 0
            else:
                state.since_best += config.eval_every
                # patience running out at the last epoch stops nothing: the budget ended the training
                if config.patience is not None and state.since_best >= config.patience and state.epoch < config.epochs:
                    state.stopped_early = True
        state.history.append(row)
        state.seconds = before + time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(row)
        if state_path is not None:
            if state.epoch % config.save_every == 0 or state.stopped_early:
                state.save(state_path)
            _test_hook_die(state_path, state.epoch)

    if config.select == "best-val" and state.best is not None:
        kept.load_state_dict(state.best["state_dict"])
    if swa is not None:
        kept = swa.finish(x_train, config.batch_size, seed)
    state.seconds = before + time.perf_counter() - t0
    return kept.cpu().eval(), state


def member_seed(seed: int, member: int) -> int:
    """Member 0 keeps the fold's seed, so it is the very model a single-model run trains; the others
    get seeds derived from (seed, member), which no fold seed (seed * 1000 + fold) is likely to meet."""
    return seed if member == 0 else int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


@dataclass
class Member:
    """One trained member of a fold: its chosen weights and what the fold's result reports of it."""

    model: TIMNet  # the weights it ends with (EMA / SWA average, best-val epoch or last epoch)
    last: TIMNet  # its weights after the last epoch trained; the same object as `model` when nothing
    # averages (with best-val that is the best epoch's weights: no separate last-weights figures then)
    epoch: int  # the epoch whose weights `model` is
    epochs_run: int
    stopped_early: bool
    arithmetic: str
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # its training's wall time (a resumed one: summed over the calls)
    source: str | None = None  # the run it was trained in, when that is not this one (a benchmark's reuse)
    machines: list[dict] = field(default_factory=list)  # FoldState.machines: where it trained

    def to_dict(self) -> dict:
        return {"model": self.model.state_dict(), "last": self.last.state_dict() if self.last is not self.model else None,
                "epoch": self.epoch, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "arithmetic": self.arithmetic, "history": self.history, "seconds": self.seconds,
                **({"source": self.source} if self.source else {}), "cpu_dispatch": self.machines}

    @classmethod
    def from_dict(cls, d: dict, config: TIMNetConfig) -> "Member":
        model = TIMNet(config)
        model.load_state_dict(d["model"])
        last = model
        if d["last"] is not None:
            last = TIMNet(config)
            last.load_state_dict(d["last"])
        return cls(model.eval(), last.eval(), d["epoch"], d["epochs_run"], d["stopped_early"], d["arithmetic"], d["history"],
                   d.get("seconds", 0.0), d.get("source"), d.get("cpu_dispatch", []))  # older versions: no time, no machines


def distinct(records: list[dict]) -> list[dict]:
    """Each record once, in order (dicts: no set)."""
    out = []
    for r in records:
        if r not in out:
            out.append(r)
    return out


def train_members(
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    model_config: TIMNetConfig,
    config: TrainConfig,
    seed: int,
    folder: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    path: str = "fast",
) -> tuple[TIMNet | TIMNetEnsemble, list[Member]]:
    """Train the `config.members` models of one fold on the same data; returns (the fold's model, the members).

    One member is `train_fold` itself (snapshot folder/state.pt). With several, member m trains
    from `member_seed(seed, m)` (initialisation, batch order, dropout and augmentation draws) and
    snapshots to folder/state_member<m>.pt; a finished member is kept in folder/member_<m>.pt, so
    an interrupted fold resumes inside the member it was training. `on_epoch` sees epochs counted
    over all members (member m's epoch e is m * epochs + e).
    """
    members = [train_member(m, x, y, train_idx, val_idx, model_config=model_config, config=config, seed=seed,
                            folder=folder, on_epoch=on_epoch, device=device, path=path)
               for m in range(config.members)]
    return ensemble([m.model for m in members]), members


def load_saved(path: Path) -> dict:
    """A snapshot or finished member this library wrote; one that cannot be read (a disk that
    filled, a copy cut short) is named with what to do, not a traceback from deep in torch."""
    if record := damaged_record(path):
        why = f"damaged: the bytes of {record} fail their checksum"
    else:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)  # a RUN_DIR from elsewhere runs no code
            why = None if isinstance(saved, dict) else f"holds a {type(saved).__name__}"
        except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, ... by the damage
            why = _why_unreadable(e)
    if why is not None:
        raise TimnetError(f"{path}: not a snapshot timnet can read ({why}); expected one timnet wrote: delete it, "
                          "and the same command trains that part again from its start")
    return saved


def _why_unreadable(e: Exception) -> str:
    """A line saying why torch.load failed. Its weights-only refusals open with paragraphs that
    suggest `weights_only=False`, which would run whatever the file pickles: the object refused
    is named instead."""
    text = str(e).strip()
    if "Weights only load failed" not in text:
        return (text.splitlines() or [type(e).__name__])[0]
    if named := re.search(r"(?:GLOBAL|[Uu]nsupported class) ([\w.]+)", text):
        return f"it pickles {named.group(1)}, not only tensors and plain values: refused unread, as unpickling it could run code"
    return "not a torch file of tensors and plain values"


def member_done_path(folder: Path | None, m: int, members: int) -> Path | None:
    """Where member m of a fold of `members` is kept once trained (None for a one-model fold: its
    model.pt is written with the fold's result)."""
    return folder / f"member_{m}.pt" if folder is not None and members > 1 else None


def snapshot_path(folder: Path, m: int) -> Path:
    """Where member m of a fold in `folder` keeps its unfinished training."""
    return folder / ("state.pt" if m == 0 else f"state_member{m}.pt")


def train_member(
    m: int,
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    model_config: TIMNetConfig,
    config: TrainConfig,
    seed: int,
    folder: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    path: str = "fast",
) -> Member:
    """Train (or resume, or load once finished) member m of a fold: train_members' unit of work.

    A member depends on nothing but (seed, m), so members of one fold may train in separate
    processes at once (timnet.backends) and give the very weights one process gives in turn."""
    done = member_done_path(folder, m, config.members)
    if done is not None and done.is_file():
        return Member.from_dict(load_saved(done), model_config)
    state_path = None if folder is None else snapshot_path(folder, m)
    offset = m * config.epochs
    report = on_epoch if on_epoch is None or m == 0 else (
        lambda row: on_epoch({**row, "epoch": row["epoch"] + offset}))
    model, state = train_fold(x, y, train_idx, val_idx, model_config=model_config, config=config.for_member(m),
                              seed=member_seed(seed, m), state_path=state_path, on_epoch=report,
                              device=device, path=path)
    chosen = state.best["epoch"] if (config.select == "best-val" and state.best) else state.epoch
    member = Member(model, state.model.cpu().eval(), chosen, state.epoch, state.stopped_early,
                    state.arithmetic, state.history, round(state.seconds, 2), machines=state.machines)
    if done is not None:
        save_torch(member.to_dict(), done)
        state_path.unlink(missing_ok=True)
    return member


def _adam(model: TIMNet, config: TrainConfig, *, fused: bool) -> torch.optim.Optimizer:
    """The paper's Adam. The fast path takes PyTorch's fused kernel where this torch has one for the
    device (CPU since torch 2.4): the same update rule in one pass instead of ~10 ops per tensor,
    rounding apart from the unfused one (train_fold records which: `arithmetic`)."""
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps)
    if fused:
        try:
            return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(model.parameters(), **kwargs)


def adam_eps(config: TrainConfig, t: int) -> float:
    """PyTorch's Adam epsilon at step t (from 1) that gives config's rule: Keras adds its epsilon
    before dividing sqrt(v) by sqrt(1 - beta2^t), PyTorch after; the two updates are equal when
    PyTorch's is Keras's divided by that factor."""
    if config.adam_eps_rule == "keras":
        return config.adam_eps / math.sqrt(1 - config.beta2**t)
    return config.adam_eps


def _test_hook_die(state_path: Path, epoch: int) -> None:
    """Kill this process (SIGKILL, like `kill -9`) at the end of an epoch (after its snapshot, if
    the epoch saves one), when a test asks to.

    TIMNET_TEST_DIE_AFTER=<fold dir name>:<epoch>, e.g. fold_02:3, or <fold dir>/<snapshot>:<epoch>,
    e.g. fold_02/state_member1.pt:2 for a later member; unset in normal use. It dies once: a
    marker file beside the snapshot lets the resumed process go on.
    """
    import os
    import signal

    target = os.environ.get("TIMNET_TEST_DIE_AFTER")
    member = "" if state_path.name == "state.pt" else f"{state_path.stem}_"
    marker = state_path.parent / f"test_died_after_{member}epoch_{epoch}"
    names = (f"{state_path.parent.name}/{state_path.name}:{epoch}",
             *((f"{state_path.parent.name}:{epoch}",) if not member else ()))
    if target and target in names and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)

