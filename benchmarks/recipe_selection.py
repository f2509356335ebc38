"""Table: candidate training recipes scored on validation data only (how `--recipe strong` was chosen).

    python benchmarks/recipe_selection.py runs/emodb.npz --runs runs/select_emodb --json select_emodb.json

Each candidate is a cross-validated run (k folds of the paper seed's KFold) in which every fold
carves a stratified validation share from its training part, trains on the rest and is scored
on that share with the weights it ends with. These runs are validation-only: no test fold is
ever predicted (timnet.run.Run(evaluate_test=False)). The rule: the strong recipe is the
candidate with the best mean validation UAR over the corpora, among those no worse than the
paper's on either corpus.
"""
from __future__ import annotations

import argparse
import sys
import time

from _common import pm, write_json
from timnet.backends import LocalBackend
from timnet.corpora import defaults_for
from timnet.features import load_features
from timnet.run import Run, execute_runs
from timnet.sweep import trial_runs
from timnet.train import TrainConfig

AUG = {"time_shift": 20, "time_masks": 2, "time_mask_width": 20, "freq_masks": 2, "freq_mask_width": 4}
CANDIDATES = {
    "paper": {},  # SPEC.md §4: 500 epochs, constant learning rate, last weights
    "ema": {"epochs": 300, "ema_decay": 0.999},
    "ema+aug": {"epochs": 300, "ema_decay": 0.999, **AUG},
    "ema+aug+cosine": {"epochs": 300, "ema_decay": 0.999, "lr_schedule": "cosine", "warmup_epochs": 5, **AUG},
    "ema+aug+mixup": {"epochs": 300, "ema_decay": 0.999, "mixup_alpha": 0.2, **AUG},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract`")
    p.add_argument("--runs", required=True, help="folder for the candidates' validation runs (resumed)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of each training part (default 0.2)")
    p.add_argument("--workers", type=int, default=2, help="folds trained at once (default 2)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names (default: all)")
    args = p.parse_args()

    fs = load_features(args.features)
    names = args.candidates.split(",")
    seed = defaults_for(fs.corpus)[0]
    t0 = time.time()
    def make_run(folder, config, model_overrides):
        return Run(fs, folder, config=config, folds=args.folds, seed=seed, threads=1, model_overrides=model_overrides,
                   evaluate_test=False)  # validation-only: no test fold is ever predicted

    runs = trial_runs(args.runs, [CANDIDATES[n] for n in names], base=TrainConfig(val_fraction=args.val_fraction),
                      make_run=make_run, names=names)
    summaries = execute_runs(runs, backend=LocalBackend(args.workers), progress=False,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.time() - t0
    print(f"### {fs.corpus}: validation UAR/WAR of candidate recipes ({args.folds} folds, seed {seed}, "
          f"{args.val_fraction:.0%} of each training part for validation)\n")
    print("| candidate | epochs | validation UAR | validation WAR |")
    print("|---|---:|---:|---:|")
    rows = []
    for name, run, s in zip(names, runs, summaries):
        rows.append({"candidate": name, "params": CANDIDATES[name], "epochs": run.config.epochs,
                     "val_uar": s["mean_val_uar"], "val_uar_std": s["std_val_uar"],
                     "val_war": s["mean_val_war"], "val_war_std": s["std_val_war"],
                     "folds": [{k: f[k] for k in ("fold", "val_uar", "val_war", "n_val")} for f in s["folds"]]})
        print(f"| {name} | {run.config.epochs} | {pm(s['mean_val_uar'], s['std_val_uar'])} | "
              f"{pm(s['mean_val_war'], s['std_val_war'])} |")
    write_json(args.json, {"corpus": fs.corpus, "folds": args.folds, "seed": seed, "val_fraction": args.val_fraction,
                           "candidates": rows, "wall_s_this_call": round(wall, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
