"""Table: candidate training recipes scored on validation data only (how `--recipe strong` was chosen).

    python benchmarks/recipe_selection.py runs/emodb.npz --runs runs/select_emodb --json select_emodb.json

Each candidate is a cross-validated run (k folds of the paper seed's KFold) in which every fold
carves a stratified validation share from its training part, trains on the rest and is scored
on that share with the weights it ends with. These runs are validation-only: no test fold is
ever predicted (timnet.run.Run(evaluate_test=False)). The rule: the strong recipe is the
candidate with the best mean validation UAR over the corpora, among those no worse than the
paper's on either corpus. A candidate that adds only SWA to another also scores that other's
weights (its last ones), so "vtlp+gain" is measured by the run of "swa+vtlp+gain".

Validation shares are small (about 86 utterances per EMODB fold), so a mean can move by a few
points by chance. The table therefore also gives each candidate's difference from the paper's
recipe fold by fold (the same folds and validation shares): mean ± standard error over folds.
Averaging candidates also score their own last weights, the pure effect of the averaging, and
ensembles (`members`) their first member alone, which is the single-model recipe weight for
weight (for a mixed ensemble, `plain_members`, the single model without augmentation): both
differences are paired within one run (the same trainings, the same validation data).
Folds are trained fold by fold across the candidates, so a selection stopped part way (a session's
end) has complete pairs; `--table-only` prints the table of the folds finished so far.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timnet import dispatch

# before numpy is imported, as the `timnet` command does (its ten-fold and LOSO runs train through
# it): --vtlp's band centres come through numpy's exp, whose AVX-512 loops round apart, so unpinned
# the augmented candidates trained other bits on an AVX-512 machine than on an AVX2 one
dispatch.pin()

import numpy as np  # noqa: E402

from _common import (FOLD_DONE, members_from, paired_difference, pm, record, restore, run_main, shared_members,
                     signed, write_json)
from timnet.backends import LocalBackend
from timnet.corpora import paper_seed
from timnet.features import load_features
from timnet.folds import make_folds
from timnet.recipe import AUGMENTATIONS
from timnet.run import Run, execute_runs, validation_summary
from timnet.sweep import trial_runs
from timnet.train import TrainConfig

AUG = {"time_shift": 20, "time_masks": 2, "time_mask_width": 20, "freq_masks": 2, "freq_mask_width": 4}
CANDIDATES = {
    "paper": {},  # SPEC.md §4: 500 epochs, constant learning rate, last weights
    "ema": {"epochs": 300, "ema_decay": 0.999},
    "ema+aug": {"epochs": 300, "ema_decay": 0.999, **AUG},
    "ema+aug+cosine": {"epochs": 300, "ema_decay": 0.999, "lr_schedule": "cosine", "warmup_epochs": 5, **AUG},
    "ema+aug+mixup": {"epochs": 300, "ema_decay": 0.999, "mixup_alpha": 0.2, **AUG},
    # the paper's training exactly, its fold model the mean of the last 100 epochs' weights
    "swa": {"swa_epochs": 100},
    # the same with the augmentation above: its last weights are "augmentation, 500 epochs, no averaging"
    "swa+aug": {"swa_epochs": 100, **AUG},
    # speaker-like variation instead of masks: vocal-tract warp and tempo, factors within ±10 %;
    # its last weights are "vtlp+tempo, 500 epochs, no averaging"
    "swa+vtlp": {"swa_epochs": 100, "vtlp": 0.1, "tempo": 0.1},
    # the same, and recording levels varied by up to ±6 dB (speakers' levels differ by about that)
    "swa+vtlp+gain": {"swa_epochs": 100, "vtlp": 0.1, "tempo": 0.1, "gain": 6.0},
    # the last weights of "swa+vtlp+gain", which trains it step for step (EMODB's best, below the paper's on CASIA)
    "vtlp+gain": {"vtlp": 0.1, "tempo": 0.1, "gain": 6.0},
    # members of the SWA recipe per fold, probabilities averaged; the first member is "swa" itself
    "swa-x2": {"swa_epochs": 100, "members": 2},
    "swa-x3": {"swa_epochs": 100, "members": 3},
    "swa-x4": {"swa_epochs": 100, "members": 4},  # its run also scores swa-x3, swa-x2 and swa (nested members)
    # the next round (RESULTS.md, stop 39): members made different by the speaker-like augmentations,
    # all four, or only members 2-3 (members 0-1 are then swa-x2's, to every digit)
    "swa+vtlp+gain-x4": {"swa_epochs": 100, "vtlp": 0.1, "tempo": 0.1, "gain": 6.0, "members": 4},
    "swa-mixed-x4": {"swa_epochs": 100, "vtlp": 0.1, "tempo": 0.1, "gain": 6.0, "members": 4, "plain_members": 2},
    # the screen of stop 48 (RESULTS.md): single models against "swa", paired fold by fold, before any
    # four-member round: mixup (the candidate never finished at 300 epochs) and dropout 0.2
    # at the paper's 500 epochs; their last weights score "mixup" and "dropout0.2"
    "swa+mixup": {"swa_epochs": 100, "mixup_alpha": 0.2},
    "mixup": {"mixup_alpha": 0.2},
    "swa+dropout0.2": {"swa_epochs": 100, "dropout": 0.2},
    "dropout0.2": {"dropout": 0.2},
    # the four-member round a candidate of the screen goes on to if it passes (RESULTS.md): against
    # swa-x4; member 0 is the screen's single model, to every digit, and is taken from its run
    "swa+mixup-x4": {"swa_epochs": 100, "mixup_alpha": 0.2, "members": 4},
    "swa+dropout0.2-x4": {"swa_epochs": 100, "dropout": 0.2, "members": 4},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract`")
    p.add_argument("--runs", required=True, help="folder for the candidates' validation runs (resumed)")
    p.add_argument("--json", default=None, help="where to write the table's figures (required unless --table-only)")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of each training part (default 0.2)")
    p.add_argument("--workers", type=int, default=2, help="folds trained at once (default 2)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names (default: all)")
    p.add_argument("--table-only", action="store_true", help="train nothing: the table of the folds finished so far")
    p.add_argument("--baseline", default="paper", help="the candidate every Δ column is paired with (default paper; "
                   "run or scored by another run here, e.g. swa for the screen of stop 48)")
    args = p.parse_args()
    if args.json is None and not args.table_only:
        p.error("--json is required (unless --table-only)")

    fs = load_features(args.features)
    names = args.candidates.split(",")
    seed = paper_seed(fs.corpus)
    t0 = time.time()
    def make_run(folder, config, model_overrides):
        return Run(fs, folder, config=config, folds=args.folds, seed=seed, threads=1, model_overrides=model_overrides,
                   evaluate_test=False)  # validation-only: no test fold is ever predicted

    keys = {n: f"select_{fs.corpus.lower()}_{args.folds}folds_val{args.val_fraction}/{n}" for n in names}
    for n in names:
        restore(Path(args.runs) / n, keys[n])  # folds finished in earlier sessions (benchmarks/ledger)
    runs = trial_runs(args.runs, [CANDIDATES[n] for n in names], base=TrainConfig(val_fraction=args.val_fraction),
                      make_run=make_run, names=names)
    for n, run in zip(names, runs):
        reuse_members(run, n, Path(args.runs))
    if args.table_only:
        summaries = [finished_summary(run) for run in runs]
        kept = [i for i, s in enumerate(summaries) if s["folds"]]  # candidates with a finished fold
        names, runs, summaries = [names[i] for i in kept], [runs[i] for i in kept], [summaries[i] for i in kept]
    else:
        def record_all() -> None:
            for n, run in zip(names, runs):
                record(run.dir, keys[n])

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)
            if FOLD_DONE.search(message):
                record_all()  # at once: a session's end kills the run with no `finally` to run
                # and the fold's members go at once to the same fold of the candidates that train
                # them alike, before the pool hands out those candidates' units of that fold
                for n, run in zip(names, runs):
                    reuse_members(run, n, Path(args.runs))

        try:
            backend = LocalBackend(args.workers, waits=member_waits(runs))
            summaries = execute_runs(runs, backend=backend, progress=False, fold_major=True, log=log)
        finally:
            record_all()  # also the folds of an interrupted selection
    wall = time.time() - t0
    if lost := [f"{n} (fold {', '.join(map(str, s['diverged_folds']))})" for n, s in zip(names, summaries)
                if s.get("diverged_folds")]:
        # its mean would rest on the folds it happened to converge on: no row of it would be honest
        print(f"left out of the table, as diverged (the loss became NaN or infinite; see the folds' result.json): "
              f"{'; '.join(lost)}", file=sys.stderr)
        kept = [i for i, s in enumerate(summaries) if not s.get("diverged_folds")]
        names, runs, summaries = [names[i] for i in kept], [runs[i] for i in kept], [summaries[i] for i in kept]
    print(f"### {fs.corpus}: validation UAR/WAR of candidate recipes ({args.folds} folds, seed {seed}, "
          f"{args.val_fraction:.0%} of each training part for validation)\n")
    overlap = validation_overlap(runs[0], fs)
    print(f"The validation shares hold {overlap['in_validation']} of the {overlap['utterances']} utterances "
          f"({overlap['share']:.1%}), each of them in one of the paper's {overlap['test_folds']} test folds "
          f"({overlap['min_fold_share']:.0%}–{overlap['max_fold_share']:.0%} of each): a choice made here is made "
          "on the corpus, not nested in its ten-fold protocol.\n")
    print("| candidate | epochs | validation UAR (mean ± population std over folds) | validation WAR | "
          f"Δ UAR vs {args.baseline} (mean ± s.e., paired by fold) | its last weights' UAR "
          "| Δ vs last | its first member's UAR | Δ vs first member |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    derived = derived_candidates(names, summaries)
    base = dict(zip(names, summaries)).get(args.baseline) or derived.get(args.baseline, (None, None))[1]
    if base is None:
        print(f"--baseline {args.baseline}: not among the candidates run or scored here; no Δ column", file=sys.stderr)
    key = f"delta_uar_vs_{args.baseline}"
    rows = []
    for name, run, s in zip(names, runs, summaries):
        folds = s["folds"]
        delta = paired(folds, base["folds"], "val_uar", "val_uar") if base is not None and name != args.baseline else None
        last = [f["val_uar_last"] for f in folds if "val_uar_last" in f]
        single = [f["val_uar_single"] for f in folds if "val_uar_single" in f]
        vs_last, vs_single = paired(folds, folds, "val_uar", "val_uar_last"), paired(folds, folds, "val_uar", "val_uar_single")
        rows.append({"candidate": name, "params": CANDIDATES[name], "epochs": run.config.epochs,
                     "val_uar": s["mean_val_uar"], "val_uar_std": s["std_val_uar"],
                     "val_war": s["mean_val_war"], "val_war_std": s["std_val_war"],
                     key: delta, "last_weights_val_uar": float(np.mean(last)) if last else None,
                     "delta_uar_vs_last": vs_last, "first_member_val_uar": float(np.mean(single)) if single else None,
                     "delta_uar_vs_first_member": vs_single,
                     "folds": [{k: f[k] for k in ("fold", "val_uar", "val_war", "n_val", "val_uar_last", "val_uar_single",
                                                     "val_uar_single_last")
                                if k in f} for f in s["folds"]]})
        print(f"| {name} | {run.config.epochs} | {pm(s['mean_val_uar'], s['std_val_uar'])} | "
              f"{pm(s['mean_val_war'], s['std_val_war'])} | {signed(delta)} | {mean(last)} | {signed(vs_last)} | "
              f"{mean(single)} | {signed(vs_single)} |")
    if derived:
        k = max(f["fold"] for _, s in derived.values() for f in s["folds"])
        print("\nCandidates scored by another run that trains their models step for step (its last weights, "
              "when it only adds averaging; its first members, when it is a larger ensemble):\n")
        print("| candidate | scored by | " + " | ".join(f"fold {i + 1}" for i in range(k)) + f" | mean | Δ UAR vs {args.baseline} |")
        print("|---|---|" + "---:|" * (k + 2))
        for name, (how, s) in derived.items():
            uars = [f["val_uar"] for f in s["folds"]]
            by_fold = {f["fold"]: f["val_uar"] for f in s["folds"]}  # a fold not finished leaves its own cell empty
            delta = paired(s["folds"], base["folds"], "val_uar", "val_uar") if base is not None and name != args.baseline else None
            rows.append({"candidate": name, "params": CANDIDATES[name], "read_from": how,
                         "val_uar": float(np.mean(uars)), key: delta, "folds": s["folds"]})
            print(f"| {name} | {how} | " + " | ".join(f"{by_fold[i]:.4f}" if i in by_fold else "–" for i in range(1, k + 1))
                  + f" | {np.mean(uars):.4f} | {signed(delta)} |")
    if args.json:
        write_json(args.json, {"corpus": fs.corpus, "folds": args.folds, "seed": seed, "val_fraction": args.val_fraction,
                               "test_overlap": overlap, "candidates": rows, "wall_s_this_call": round(wall, 1), "complete": not args.table_only})
    return 0


def validation_overlap(run: Run, fs, test_folds: int = 10) -> dict:
    """How much of the corpus the selection's validation shares hold, and so how much of each test
    fold of the paper's protocol (the same seed's KFold) took part in a choice made on them.
    Every candidate shares these splits (the same folds, seed and fraction)."""
    seen = np.zeros(len(fs), dtype=bool)
    for k in range(1, run.folds_n + 1):
        seen[run.validation_split(k)[1]] = True
    per_fold = [float(seen[te].mean()) for _, te in make_folds(len(fs), folds=test_folds, seed=run.seed)]
    return {"utterances": len(fs), "in_validation": int(seen.sum()), "share": float(seen.mean()),
            "test_folds": test_folds, "min_fold_share": min(per_fold), "max_fold_share": max(per_fold)}


def finished_summary(run: Run) -> dict:
    """The validation figures of a run's finished folds, as execute_runs summarises a whole run."""
    folds = [r for _, r in sorted(run.done_results().items())]
    return validation_summary(folds) if folds else {"folds": []}


def reuse_members(run: Run, name: str, runs_dir: Path) -> None:
    """An ensemble candidate's members are, weight for weight, those of the same index in the other
    candidates' runs where they train alike: "swa" is every SWA ensemble's member 0, swa-x3 is
    swa-x4's first three, swa-x4's first two are swa-mixed-x4's plain members and
    swa+vtlp+gain-x4's last two its augmented ones. Where such a run here has finished folds with
    their models, those members are put in as this run's finished members instead of being trained
    again as each fold finishes, and a member that a candidate listed before trains alike waits for
    that candidate's fold (member_waits): with --candidates swa-x4,swa+vtlp+gain-x4,swa-mixed-x4
    the last takes members 2-3 of the same fold from the second as it ends, in the same session.
    (Fold models do not outlive the machine: the ledger keeps figures only.)"""
    if CANDIDATES[name].get("members", 1) < 2:
        return
    # the largest first: with several runs offering a member, each is taken once, from the first
    for other in sorted(CANDIDATES, key=lambda o: -CANDIDATES[o].get("members", 1)):
        if other != name:
            members_from(run.dir, runs_dir / other)  # a member a fold has already is left as it is


def member_waits(runs: list[Run]) -> dict:
    """{((run, fold), member): (earlier run, fold)}: each ensemble member that a candidate listed
    before trains alike waits for that candidate's same fold, whose end gives it (reuse_members
    from the log), instead of a free worker training it again meanwhile."""
    from timnet.rundir import read_identity

    ids = [read_identity(run.dir) for run in runs]
    waits = {}
    for i, run in enumerate(runs):
        for j in range(i):
            for m in shared_members(ids[j], ids[i]):
                for k in range(1, run.folds_n + 1):
                    waits.setdefault(((i, k), m), (j, k))  # the first candidate listed that trains it
    return waits


def derived_candidates(names: list[str], summaries: list[dict]) -> dict[str, tuple[str, dict]]:
    """{candidate: (whose figures, figures)} for the candidates not run themselves whose models
    another run trains step for step:
    - a run that only adds SWA to a candidate trains it step for step (SWA changes no training step:
      tests/test_recipe.py; on EMODB the paper's figures are reproduced to every digit), so its last
      weights score that candidate: "paper" is read from "swa" and "vtlp+gain" from "swa+vtlp+gain";
    - an ensemble of K members holds the ensembles of its first j < K members (member m's seed does
      not depend on K: tests/test_members.py), so "swa-x4" also scores "swa-x3", "swa-x2" and "swa",
      and its first member's last weights score "paper" as the one-member run's do."""
    out = {}
    for name, s in zip(names, summaries):
        params = dict(CANDIDATES[name])
        k = params.get("members", 1)
        if k > 1:
            figures = {1: [(f["fold"], f["val_uar_single"]) for f in s["folds"] if "val_uar_single" in f]}
            for f in s["folds"]:
                for g in f.get("val_first_members", []):
                    figures.setdefault(g["members"], []).append((f["fold"], g["val_uar"]))
            for j, uars in figures.items():
                same = named(first_members(params, j))
                if same is not None and same not in names and same not in out and uars:
                    how = "its first member" if j == 1 else f"its first {j} members"
                    out[same] = (f"{how}: {name}", {"folds": [{"fold": f, "val_uar": u} for f, u in uars]})
            params = first_members(params, 1)
            params.pop("swa_epochs", None)
            same = named(params)  # the first member's last weights: its training without the averaging
            uars = [{"fold": f["fold"], "val_uar": f["val_uar_single_last"]} for f in s["folds"] if "val_uar_single_last" in f]
            if same is not None and same not in names and same not in out and uars:
                out[same] = (f"its first member's last weights: {name}", {"folds": uars})
        elif params.pop("swa_epochs", None) is not None:
            same = named(params)
            if same is not None and same not in names:
                out[same] = (f"its last weights: {name}", {"folds": [{"fold": f["fold"], "val_uar": f["val_uar_last"]}
                                                                     for f in s["folds"] if "val_uar_last" in f]})
    return out


def first_members(params: dict, j: int) -> dict:
    """The parameters of the ensemble of a run's first j members: those of its plain members
    (--plain-members) have no augmentation."""
    plain = params.get("plain_members", 0)
    out = {n: v for n, v in params.items() if n not in ("members", "plain_members")
           and not (j <= plain and n in AUGMENTATIONS)}
    if j > 1:
        out["members"] = j
    if 0 < plain < j:
        out["plain_members"] = plain
    return out


def named(params: dict) -> str | None:
    """The candidate of exactly these parameters, if there is one."""
    return next((n for n, p in CANDIDATES.items() if p == params), None)


def paired(a: list[dict], b: list[dict], key_a: str, key_b: str) -> dict | None:
    """a[key_a] - b[key_b] fold by fold, over the folds both sides have (_common.paired_difference)."""
    return paired_difference({f["fold"]: f[key_a] for f in a if key_a in f}, {f["fold"]: f[key_b] for f in b if key_b in f})


def mean(values: list[float]) -> str:
    return f"{np.mean(values):.4f}" if values else ""


if __name__ == "__main__":
    run_main(main)
