"""Table: leave-one-speaker-out cross-validation, both recipes, mean ± std over seeds.

    python benchmarks/speaker_independent.py runs/emodb.npz --runs runs/emodb_loso --json emodb_loso.json

For each recipe, `timnet train --split speaker --folds <speakers> --seeds S1,S2,S3` (resumed):
every fold tests one speaker the model never heard. The seeds change the initialisation, the
batch order, the dropout masks and the augmentation draws (the folds are the speakers). Finished
folds are kept in the ledger (benchmarks/ledger/loso_<corpus>/<recipe>), so that a table's compute
can span several sessions; `--table-only` prints the table of the folds finished so far, from
the ledger, without training. A recipe that averages weights (`swa`, `strong-1member`) also scores
its last weights on each test speaker (for `swa`, the paper's recipe step for step): a "last
weights" column, paired with it (reported, never used to choose). An ensemble's member 0 is its
one-member form's model weight for weight (`strong`'s is `strong-1member`'s, `swa-x4`'s is
`swa`'s): `--recipes swa,strong-1member,strong` (the default) takes it from that finished run
(`--first-members`, by default strong-1member when it is among the recipes), so only the other
members train, and the three give the paper's recipe, one strong member and `--recipe strong`.
Each ensemble's first member alone is a column too (`strong: first member`), so `--recipes swa,strong`
gives the same three figures with no one-member run in between, whose fold models (not kept by the
ledger) a lost run folder would take along. Below the table: each recipe minus the first (and
the first's last weights), paired by seed and test speaker over the seeds complete in both. A run
folder, or a ledger entry, holding another recipe, seed or features than the table names is
refused, not printed under the recipe's name.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from timnet import dispatch

dispatch.pin()  # before numpy, as in `timnet train`, which trains these runs: the same loops on both sides

import numpy as np  # noqa: E402

from _common import (environment, fold_seconds, gives_first_member, paired_difference, pm, recipe_args, recipe_members,
                     record, restore_checked, run_main, seed_run, signed, table_recipes, take_first_members, train,
                     write_json)
from timnet.corpora import paper_seed
from timnet.errors import TimnetError
from timnet.features import load_features
from timnet.rundir import features_fingerprint, fold_files, read_fold_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract` (with speakers)")
    p.add_argument("--runs", required=True, help="folder for the runs (RUNS/<recipe>/seed_<s>; resumed)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--recipes", default="swa,strong-1member,strong",
                   help="comma-separated recipes of _common.RECIPE_ARGS (default swa,strong-1member,strong: swa's last "
                        "weights are the paper's recipe, strong-1member is strong's first member, so the three cost "
                        "what the paper's recipe and strong cost apart)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the paper seed and the next two)")
    p.add_argument("--first-members", default=None, metavar="RECIPE",
                   help="a one-member recipe whose finished runs in RUNS (the same seeds) are the first members of "
                        "the ensemble recipes (strong): each fold's member 0 is taken from there instead of trained "
                        "again (the same weights); default strong-1member when it is among --recipes")
    p.add_argument("--table-only", action="store_true", help="train nothing: the table of the folds finished so far")
    args = p.parse_args()

    fs = load_features(args.features)
    if fs.speakers is None:
        raise TimnetError(f"{args.features}: no speaker ids; expected features from `timnet extract` of a corpus with speakers")
    speakers, fingerprint = sorted(set(fs.speakers.tolist())), features_fingerprint(fs)
    if args.seeds is None:
        seed = paper_seed(fs.corpus)
        args.seeds = f"{seed},{seed + 1},{seed + 2}"
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes, args.first_members = table_recipes(args.recipes, args.first_members)
    out = {}
    for recipe in recipes:
        run = Path(args.runs) / recipe
        key = f"loso_{fs.corpus.lower()}/{recipe}"
        # folds finished in earlier sessions (benchmarks/ledger), if they are this recipe's
        restore_checked(run, key, recipe, seeds, fingerprint=fingerprint, folds=len(speakers), split="speaker")
        wall = None
        if not args.table_only:
            members = recipe_members(recipe)
            if gives_first_member(args.first_members, recipe):
                for s in seeds:
                    take_first_members(seed_run(run, s, seeds), seed_run(Path(args.runs) / args.first_members, s, seeds),
                                       members=members)
            try:
                _, wall = train(args.features, run, *recipe_args(recipe), "--split", "speaker",
                                "--folds", str(len(speakers)), "--seeds", args.seeds, record_as=key)
            finally:
                record(run, key)  # also the folds of an interrupted run
        out[recipe] = {"seeds": finished_folds(run, seeds), "wall_s_this_call": wall,
                       "fold_seconds": fold_seconds(run), **environment(run)}
        out[recipe].update(summary(out[recipe]["seeds"], len(speakers)))
        out.update(other_weights(recipe, out[recipe]["seeds"], len(speakers)))
    print(table(fs.corpus, speakers, out))
    write_json(args.json, {"corpus": fs.corpus, "speakers": speakers, "seeds": seeds, "recipes": out})
    return 0


def other_weights(recipe: str, per_seed: dict[int, list[dict]], n_folds: int) -> dict:
    """The figures a recipe's folds hold of other weights than its own, as table entries of their
    own where every finished fold has them: an averaging recipe's last weights (for `swa`, the
    paper's recipe step for step) and an ensemble's first member alone (for `strong`, the
    one-member recipe weight for weight, so `--recipes swa,strong` gives all three)."""
    out = {}
    folds = [f for fs_ in per_seed.values() for f in fs_]
    for name, pick in (("last weights", lambda f: f.get("last_weights")),
                       ("first member", lambda f: (f.get("members") or [None])[0])):
        if folds and all(pick(f) is not None for f in folds):
            figures = {s: [{**f, **pick(f)} for f in fs_] for s, fs_ in per_seed.items()}
            out[f"{recipe}: {name}"] = {"seeds": figures, **summary(figures, n_folds)}
    return out


def finished_folds(run: Path, seeds: list[int]) -> dict[int, list[dict]]:
    """Per seed, the result.json of each finished fold (test speakers, WAR, UAR), in fold order."""
    out = {}
    for s in seeds:
        folds = []
        for path in fold_files(seed_run(run, s, seeds), "result.json"):  # fold_NN only, each checked whole
            r = read_fold_result(path)
            folds.append({k: r[k] for k in ("fold", "test_speakers", "war", "uar", "n_test", "seconds", "last_weights",
                                         "members", "first_members") if k in r})  # an ensemble: each member, its smaller ensembles
        out[s] = folds
    return out


def summary(per_seed: dict[int, list[dict]], n_folds: int) -> dict:
    """Means over the folds of each complete seed, and their mean and sample std across those seeds."""
    complete = {s: f for s, f in per_seed.items() if len(f) == n_folds}
    means = {s: (float(np.mean([x["war"] for x in f])), float(np.mean([x["uar"] for x in f]))) for s, f in complete.items()}
    wars, uars = np.array([m[0] for m in means.values()]), np.array([m[1] for m in means.values()])
    spread = lambda v: float(v.std(ddof=1)) if len(v) > 1 else None
    return {"complete_seeds": list(means), "per_seed_means": {s: {"war": w, "uar": u} for s, (w, u) in means.items()},
            "mean_war": float(wars.mean()) if len(wars) else None, "std_war": spread(wars),
            "mean_uar": float(uars.mean()) if len(uars) else None, "std_uar": spread(uars)}


def paired(a: dict, b: dict, complete: list[int], b_figures=lambda f: f) -> str:
    """a minus b (per seed, their folds; b_figures picks b's figures from a fold: its last weights,
    say), WAR and UAR, over the folds of the seeds in `complete`, matched by seed and test speaker:
    mean ± the s.e. of the folds taken as independent, and the s.e. of the speakers' mean
    differences over the seeds (a speaker's folds under several seeds share their test utterances:
    not independent draws, so the second counts each speaker once)."""
    def figures(per_seed, key, pick=lambda f: f):
        return {(s, tuple(f["test_speakers"])): pick(f)[key] for s in complete for f in per_seed.get(s, [])
                if pick(f) is not None}

    diffs = {key: paired_difference(figures(a, key), figures(b, key, b_figures), cluster=lambda k: k[1])
             for key in ("war", "uar")}
    w = diffs["war"]
    if w is None or w["n"] < 2:
        return "too few folds of complete seeds"
    clustered = w["groups"] < w["n"]  # several seeds: a speaker's folds share its utterances
    parts = [f"{key.upper()} {signed(p)} (by speaker ± {p['se_groups']:.4f})" if clustered and p["se_groups"] is not None
             else f"{key.upper()} {signed(p)}" for key, p in diffs.items()]
    seeds = f"seed{'s' if len(complete) > 1 else ''} {', '.join(map(str, complete))}"
    by_speaker = (f"; by speaker: the s.e. of {w['groups']} speakers' mean differences over the seeds" if clustered else "")
    return (f"{', '.join(parts)} (mean ± s.e., {w['n']} folds of {seeds}, taken as independent{by_speaker}; "
            f"WAR ahead on {w['ahead']}, behind on {w['behind']}, equal on {w['n'] - w['ahead'] - w['behind']})")


def table(corpus: str, speakers: list[str], out: dict) -> str:
    names = list(out)
    lines = [f"### {corpus}: leave-one-speaker-out ({len(speakers)} folds)\n",
             "| test speaker | " + " | ".join(f"{n} WAR | {n} UAR" for n in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    for spk in speakers:
        cells = []
        for n in names:
            folds = [f for fs_ in out[n]["seeds"].values() for f in fs_ if f["test_speakers"] == [spk]]
            cells.append(f"{np.mean([f['war'] for f in folds]):.4f} | {np.mean([f['uar'] for f in folds]):.4f}"
                         if folds else "– | –")
        lines.append(f"| {spk} | " + " | ".join(cells) + " |")

    def total(o):
        if o["mean_war"] is None:
            return "– | –"
        # fewer complete seeds than asked for: said in the cell, as beside recipes of every seed it reads alike
        part = f" ({len(o['complete_seeds'])}/{len(o['seeds'])} seeds)" if len(o["complete_seeds"]) < len(o["seeds"]) else ""
        if o["std_war"] is None:
            return f"**{o['mean_war']:.4f}**{part} | **{o['mean_uar']:.4f}**{part}"
        return f"**{pm(o['mean_war'], o['std_war'])}**{part} | **{pm(o['mean_uar'], o['std_uar'])}**{part}"

    lines.append("| **mean (± std over seeds)** | " + " | ".join(total(out[n]) for n in names) + " |")
    lines.append("")
    for n in names:
        done = {s: len(f) for s, f in out[n]["seeds"].items()}
        per_seed = ", ".join(f"{s}: {m['war']:.4f} / {m['uar']:.4f}" for s, m in out[n]["per_seed_means"].items())
        lines.append(f"- {n}: seeds {', '.join(map(str, out[n]['complete_seeds'])) or 'none'} complete; "
                     f"folds finished per seed {done}" + (f"; per-seed means WAR / UAR {per_seed}" if per_seed else ""))
    for n in names:
        if f"{n}: last weights" in out:
            lines.append(f"- {n} minus its last weights, paired over the folds of complete seeds: "
                         f"{paired(out[n]['seeds'], out[n]['seeds'], out[n]['complete_seeds'], lambda f: f['last_weights'])}")
    # each recipe against the first (and the first's last weights: the paper's recipe where the first is swa)
    recipes = [n for n in names if not n.endswith(": last weights")]
    for n in recipes[1:]:
        for base in (recipes[0], f"{recipes[0]}: last weights"):
            both = [s for s in out[n]["complete_seeds"] if s in out.get(base, {}).get("complete_seeds", ())]
            if both:  # nothing to say where no seed is complete in both
                lines.append(f"- {n} minus {base}, paired over the folds of the seeds complete in both: "
                             f"{paired(out[n]['seeds'], out[base]['seeds'], both)}")
    lines.append("\nPer speaker: the mean over the seeds that finished its fold. Last row: the mean over complete "
                 "seeds of their per-seed mean over speakers, ± the sample std of those means.")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
