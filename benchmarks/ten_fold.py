"""Table: the recipes on the paper's protocol (10-fold KFold, paper seed) for one corpus.

    python benchmarks/ten_fold.py runs/emodb.npz --runs runs/emodb10 --recipes swa,strong-1member,strong \
        --first-members strong-1member --json emodb_10fold.json

Trains (or resumes) RUNS/<recipe> with `timnet train` and the recipe's options (_common.RECIPE_ARGS)
for each recipe, then prints a Markdown table of per-fold and mean ± std WAR/UAR beside the authors'
published figures. Folds are utterance-level, as in the paper: the same speakers are on both sides.

A one-member recipe that averages weights (`swa`: SWA of the last 100 epochs) trains the paper's
recipe step for step and also scores its own last weights on each test split (reported, never used
to choose), so its run gives a paired "last weights" column: the paper's recipe on the same
training. An ensemble (`strong`: four mixup members per fold; `swa-x4`: four SWA members, the
strong recipe of stops 30-51) reports its first member alone, its one-member form weight for
weight (`strong-1member`, `swa`); `--first-members strong-1member` (the default when it is among
--recipes) takes that member from the finished one-member run instead of training it again.
`--recipes swa,strong` gives the same figures with no one-member run between: its first-member
column is the one-member recipe, and no fold waits on a one-member model that a lost run folder
would take along (the ledger keeps figures, not models). Below the table: each recipe minus the
first, and minus the first's last weights, paired by fold (mean ± standard error).
A run folder, or a ledger entry, holding another recipe, seed or features than the table names
is refused, not printed under the recipe's name.
Finished folds are kept in the ledger (benchmarks/ledger/tenfold_<corpus>/<recipe>), so that a
table's compute can span sessions; `--table-only` prints the table of the folds finished so far.

`--seeds 32,33,34` also runs the protocol with other seeds (RUNS/<recipe>_seed<s>, ledger
tenfold_<corpus>/<recipe>_seed<s>). A seed is KFold's random_state as well as the initialisation,
so each seed is another draw of the whole protocol: other folds, other training. Below the table:
each seed's mean over its folds, and the mean ± sample std of those means over the complete seeds,
which says how far one 10-fold figure moves with the seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from timnet import dispatch

dispatch.pin()  # before numpy, as in `timnet train`, which trains these runs: the same loops on both sides

import numpy as np  # noqa: E402

from _common import (PUBLISHED, environment, fold_seconds, gives_first_member, paired_difference, pm, recipe_args,
                     recipe_members, record, restore_checked, run_main, signed, table_recipes, take_first_members, train,
                     write_json)
from timnet.corpora import paper_seed
from timnet.features import load_features
from timnet.rundir import features_fingerprint, fold_files, read_fold_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract`")
    p.add_argument("--runs", required=True, help="folder for the runs (RUNS/<recipe>; resumed)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--recipes", default="swa,strong-1member,strong",
                   help="comma-separated recipes of _common.RECIPE_ARGS (default swa,strong-1member,strong: swa's last "
                        "weights are the paper's recipe and strong-1member is strong's first member, so the three "
                        "cost what the paper's recipe and strong cost apart; add paper to train the paper's recipe "
                        "as a run of its own)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (default: the paper seed only); the paper seed's table comes first")
    p.add_argument("--first-members", default=None, metavar="RECIPE",
                   help="a one-member recipe whose finished runs in RUNS (the same seeds) are the first members "
                        "of the ensemble recipes: each fold's member 0 is taken from there instead of trained "
                        "again (the same weights: tests/test_members.py); default strong-1member when it is "
                        "among --recipes")
    p.add_argument("--table-only", action="store_true", help="train nothing: the table of the folds finished so far")
    args = p.parse_args()

    recipes, args.first_members = table_recipes(args.recipes, args.first_members)
    fs = load_features(args.features)
    corpus, fingerprint = fs.corpus, features_fingerprint(fs)
    default_seed = paper_seed(corpus)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [default_seed]
    main_seed = default_seed if default_seed in seeds else seeds[0]  # the per-fold table's seed
    out = {}
    for recipe in recipes:
        per_seed = {}
        for seed in sorted(seeds, key=lambda s: s != main_seed):  # the table's seed first
            name = recipe if seed == default_seed else f"{recipe}_seed{seed}"
            run, key = Path(args.runs) / name, f"tenfold_{corpus.lower()}/{name}"
            # folds finished in earlier sessions (benchmarks/ledger), if they are this recipe's
            restore_checked(run, key, recipe, [seed], fingerprint=fingerprint, folds=10, split="random")
            wall = None
            if not args.table_only:
                members = recipe_members(recipe)
                if gives_first_member(args.first_members, recipe):
                    source = Path(args.runs) / (args.first_members if seed == default_seed
                                                else f"{args.first_members}_seed{seed}")
                    take_first_members(run, source, members=members)
                try:
                    _, wall = train(args.features, run, *recipe_args(recipe), "--seed", str(seed), record_as=key)
                finally:
                    record(run, key)  # also the folds of an interrupted run
            folds = finished_folds(run)
            per_seed[seed] = {"folds": folds, **summary(folds), "wall_s_this_call": wall,
                              "fold_seconds": fold_seconds(run), **environment(run)}
        out[recipe] = dict(per_seed.get(main_seed, {"folds": [], **summary([])}))
        if args.seeds:
            out[recipe]["seeds"] = per_seed
            out[recipe].update(over_seeds(per_seed))
    print(table(corpus, out, seed=None if main_seed == default_seed else main_seed))
    write_json(args.json, {"corpus": corpus, "published": PUBLISHED.get(corpus, {}), "seeds": seeds,
                           "recipes": out})
    return 0


def finished_folds(run: Path) -> list[dict]:
    """The result.json figures of each finished fold, in fold order."""
    folds = []
    for path in fold_files(run, "result.json"):  # fold_NN only, in fold order; each checked whole
        r = read_fold_result(path)
        folds.append({k: r[k] for k in ("fold", "n_test", "war", "uar", "seconds", "last_weights", "first_members")
                      if k in r})  # first_members: the smaller ensembles of a run of three or more members
        if "members" in r:  # an ensemble's first member alone: the one-member recipe, weight for weight
            folds[-1]["first_member"] = r["members"][0]
    return folds


def first_j(j: int):
    """A fold's figures of its first j members' ensemble (j >= 2; None where the run has no such)."""
    return lambda f: next((e for e in f.get("first_members", ()) if e["members"] == j), None)


def views(folds: list[dict]) -> list[tuple[str, str, object]]:
    """What a recipe's folds give figures of: (summary suffix, column heading suffix, a fold's figures
    or None): the kept model, an ensemble's first member, the ensembles of its first j members (a
    run of K >= 3 members: j = 2 .. K-1), and the last weights."""
    js = sorted({e["members"] for f in folds for e in f.get("first_members", ())})
    return [("", "", lambda f: f), ("_first", ": first member", lambda f: f.get("first_member")),
            *((f"_first{j}", f": first {j} members", first_j(j)) for j in js),
            ("_last", ": last weights", lambda f: f.get("last_weights"))]


def summary(folds: list[dict]) -> dict:
    """Mean ± std over the folds (population std, as timnet's results.json), of the kept model and,
    where every fold scored them, of the last weights, of an ensemble's first member and of the
    ensembles of its first j members."""
    out = {"n_test": sum(f["n_test"] for f in folds)}
    for name, _, pick in views(folds):
        rows = [pick(f) for f in folds]
        if not rows or any(r is None for r in rows):
            continue
        for m in ("war", "uar"):
            v = np.array([r[m] for r in rows])
            out[f"mean_{m}{name}"], out[f"std_{m}{name}"] = float(v.mean()), float(v.std())
    return out


def over_seeds(per_seed: dict[int, dict], n_folds: int = 10) -> dict:
    """Mean and sample std, over the seeds with every fold finished, of their mean over the folds
    (kept model and, where scored, last weights)."""
    complete = [s for s, o in per_seed.items() if len(o["folds"]) == n_folds]
    out = {"complete_seeds": complete}
    for suffix in ("", "_last"):
        for m in ("war", "uar"):
            v = np.array([per_seed[s][f"mean_{m}{suffix}"] for s in complete if f"mean_{m}{suffix}" in per_seed[s]])
            if len(v) == len(complete) and len(v):
                out[f"seeds_mean_{m}{suffix}"] = float(v.mean())
                out[f"seeds_std_{m}{suffix}"] = float(v.std(ddof=1)) if len(v) > 1 else None
    return out


def seed_lines(recipe: str, o: dict, n_folds: int = 10) -> list[str]:
    """Per-seed means and their spread, below the table."""
    lines = []
    for suffix, label in (("", recipe), ("_last", f"{recipe}: last weights")):
        if not any(f"mean_war{suffix}" in s for s in o["seeds"].values()):
            continue
        cells = ", ".join(f"{seed}: {s[f'mean_war{suffix}']:.4f} / {s[f'mean_uar{suffix}']:.4f}"
                          if len(s["folds"]) == n_folds and f"mean_war{suffix}" in s
                          else f"{seed}: {len(s['folds'])} of {n_folds} folds" if len(s["folds"]) < n_folds
                          else f"{seed}: not scored"  # every fold in, not every one with these weights' figures
                          for seed, s in o["seeds"].items())
        line = f"- {label}, mean over the folds of each seed (WAR / UAR): {cells}"
        if o.get(f"seeds_std_war{suffix}") is not None:
            line += (f"; over seeds {', '.join(map(str, o['complete_seeds']))}: WAR "
                     f"**{pm(o[f'seeds_mean_war{suffix}'], o[f'seeds_std_war{suffix}'])}**, UAR "
                     f"**{pm(o[f'seeds_mean_uar{suffix}'], o[f'seeds_std_uar{suffix}'])}** (± sample std of the seeds' means)")
        lines.append(line)
    return lines


def paired_lines(out: dict) -> list[str]:
    """Each recipe minus the first, and minus the first's last weights where it has them (the
    paper's recipe, where the first is `swa`), matched by fold over the folds both finished."""
    names = list(out)
    lines = []
    for n in names[1:]:
        for base, pick in ((names[0], lambda f: f), (f"{names[0]}: last weights", lambda f: f.get("last_weights"))):
            d = {m: paired_difference({f["fold"]: f[m] for f in out[n]["folds"]},
                                      {f["fold"]: pick(f)[m] for f in out[names[0]]["folds"] if pick(f)})
                 for m in ("war", "uar")}
            if d["war"] is None:
                continue
            w = d["war"]
            lines.append(f"- {n} minus {base}, paired by fold over {w['n']} folds: WAR {signed(w)}, UAR {signed(d['uar'])} "
                         f"(mean ± s.e.; WAR ahead on {w['ahead']}, behind on {w['behind']}, equal on "
                         f"{w['n'] - w['ahead'] - w['behind']})")
    return lines


def table(corpus: str, out: dict, n_folds: int = 10, *, seed: int | None = None) -> str:
    """Per-fold and mean ± std figures, folds matched by number; a recipe with last-weights figures
    gets that column pair too."""
    columns = []  # (heading, recipe, the summary's suffix, a fold's figures)
    for n, o in out.items():
        for suffix, heading, pick in views(o["folds"]):
            # first members and last weights where every fold has them; the smaller ensembles'
            # columns even where a fold lacks them (its mean is then – | –)
            if suffix in ("_first", "_last") and f"mean_war{suffix}" not in o:
                continue
            columns.append((n + heading, n, suffix, pick))
    by_fold = {n: {f["fold"]: f for f in o["folds"]} for n, o in out.items()}
    which = "paper seed" if seed is None else f"seed {seed} (not the paper's)"
    lines = [f"### {corpus}: {n_folds}-fold KFold, {which}, utterance-level folds\n",
             "| fold | n_test | " + " | ".join(f"{h} WAR | {h} UAR" for h, *_ in columns) + " |",
             "|---:|---:|" + "---:|---:|" * len(columns)]
    for k in range(1, n_folds + 1):
        found = [by_fold[n][k] for n in out if k in by_fold[n]]
        cells = []
        for _, n, _, pick in columns:
            f = by_fold[n].get(k)
            fig = pick(f) if f else None
            cells.append(f"{fig['war']:.4f} | {fig['uar']:.4f}" if fig else "– | –")
        lines.append(f"| {k} | {found[0]['n_test'] if found else ''} | " + " | ".join(cells) + " |")

    def total(o, suffix):
        if f"mean_war{suffix}" not in o:
            return "– | –"
        # a recipe part way through is averaged over other folds than its neighbours: said in the cell
        part = f" ({len(o['folds'])}/{n_folds} folds)" if len(o["folds"]) < n_folds else ""
        return (f"**{pm(o[f'mean_war{suffix}'], o[f'std_war{suffix}'])}**{part} | "
                f"**{pm(o[f'mean_uar{suffix}'], o[f'std_uar{suffix}'])}**{part}")

    # the utterances the means cover: one count where every recipe covers the same folds
    n_tests = {o["n_test"] for o in out.values() if o["folds"]}
    n_test = n_tests.pop() if len(n_tests) == 1 else "–"
    lines.append(f"| **mean ± std** (population, over folds) | {n_test} | " + " | ".join(total(out[n], suffix) for _, n, suffix, _ in columns) + " |")
    lines.append("")
    for n, o in out.items():
        lines.append(f"- {n}: {len(o['folds'])} of {n_folds} folds finished")
    lines += paired_lines(out)
    for n, o in out.items():
        if "seeds" in o:
            lines += seed_lines(n, o, n_folds)
    pub = PUBLISHED.get(corpus, {})
    for name, fig in (("paper (leaky selection)", pub.get("paper")), ("authors post-fix", pub.get("post_fix"))):
        if fig:
            lines.append(f"\n{name}: WAR {fig[1]:.4f}, UAR {fig[0]:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
