"""Table: both recipes on the paper's protocol (10-fold KFold, paper seed) for one corpus.

    python benchmarks/ten_fold.py runs/emodb.npz --runs runs/emodb --json emodb_10fold.json

Trains (or resumes) RUNS/paper and RUNS/strong with `timnet train --recipe ...`, then prints a
Markdown table of per-fold and mean ± std WAR/UAR beside the authors' published figures.
Folds are utterance-level, as in the paper: the same speakers are on both sides.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import PUBLISHED, environment, fold_seconds, pm, train, write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract`")
    p.add_argument("--runs", required=True, help="folder for the runs (RUNS/paper, RUNS/strong; resumed)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--recipes", default="paper,strong", help="comma-separated recipes (default paper,strong)")
    args = p.parse_args()

    out = {}
    for recipe in args.recipes.split(","):
        run = Path(args.runs) / recipe
        r, wall = train(args.features, run, "--recipe", recipe)
        out[recipe] = {**r, "wall_s_this_call": round(wall, 1), "fold_seconds": fold_seconds(run), **environment(run)}
    first = next(iter(out.values()))
    names = list(out)
    print(f"### {first['corpus']}: 10-fold KFold, seed {first['seed']}, utterance-level folds\n")
    print("| fold | n_test | " + " | ".join(f"{n} WAR | {n} UAR" for n in names) + " |")
    print("|---:|---:|" + "---:|---:|" * len(names))
    for i, f in enumerate(first["folds"]):
        cells = " | ".join(f"{out[n]['folds'][i]['war']:.4f} | {out[n]['folds'][i]['uar']:.4f}" for n in names)
        print(f"| {f['fold']} | {f['n_test']} | {cells} |")
    cells = " | ".join(f"**{pm(out[n]['mean_war'], out[n]['std_war'])}** | **{pm(out[n]['mean_uar'], out[n]['std_uar'])}**"
                       for n in names)
    print(f"| **mean ± std** | | {cells} |")
    pub = PUBLISHED.get(first["corpus"], {})
    for name, fig in (("paper (leaky selection)", pub.get("paper")), ("authors post-fix", pub.get("post_fix"))):
        if fig:
            print(f"\n{name}: WAR {fig[1]:.4f}, UAR {fig[0]:.4f}")
    write_json(args.json, {"corpus": first["corpus"], "published": pub, "recipes": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
