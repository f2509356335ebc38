"""Table: leave-one-speaker-out cross-validation, both recipes, mean ± std over seeds.

    python benchmarks/speaker_independent.py runs/emodb.npz --runs runs/emodb_loso --json emodb_loso.json

For each recipe, `timnet train --split speaker --folds <speakers> --seeds S1,S2,S3` (resumed):
every fold tests one speaker the model never heard. The seeds change the initialisation, the
batch order, the dropout masks and the augmentation draws (the folds are the speakers). Finished
folds are kept in the ledger (benchmarks/ledger/loso_<corpus>/<recipe>), so that a table's compute
can span several sessions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _common import environment, fold_seconds, pm, record, restore, train, write_json
from timnet.corpora import defaults_for
from timnet.features import load_features


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract` (with speakers)")
    p.add_argument("--runs", required=True, help="folder for the runs (RUNS/<recipe>/seed_<s>; resumed)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--recipes", default="paper,strong", help="comma-separated recipes (default paper,strong)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the paper seed and the next two)")
    args = p.parse_args()

    fs = load_features(args.features)
    speakers = sorted(set(fs.speakers.tolist()))
    if args.seeds is None:
        seed = defaults_for(fs.corpus)[0]
        args.seeds = f"{seed},{seed + 1},{seed + 2}"
    out = {}
    for recipe in args.recipes.split(","):
        run = Path(args.runs) / recipe
        key = f"loso_{fs.corpus.lower()}/{recipe}"
        restore(run, key)  # folds finished in earlier sessions (benchmarks/ledger)
        try:
            r, wall = train(args.features, run, "--recipe", recipe, "--split", "speaker", "--folds", str(len(speakers)),
                            "--seeds", args.seeds)
        finally:
            record(run, key)  # also the folds of an interrupted run
        out[recipe] = {**r, "wall_s_this_call": round(wall, 1), "fold_seconds": fold_seconds(run), **environment(run)}
    first = next(iter(out.values()))
    names = list(out)
    print(f"### {first['corpus']}: leave-one-speaker-out ({len(speakers)} folds), seeds {args.seeds}\n")
    print("| speaker | " + " | ".join(f"{n} WAR | {n} UAR" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for i, f in enumerate(first["runs"][0]["folds"]):
        cells = []
        for n in names:
            wars = [run["folds"][i]["war"] for run in out[n]["runs"]]
            uars = [run["folds"][i]["uar"] for run in out[n]["runs"]]
            cells.append(f"{np.mean(wars):.4f} | {np.mean(uars):.4f}")
        print(f"| {','.join(f['test_speakers'])} | " + " | ".join(cells) + " |")
    cells = " | ".join(f"**{pm(out[n]['mean_war'], out[n]['std_war'])}** | **{pm(out[n]['mean_uar'], out[n]['std_uar'])}**"
                       for n in names)
    print(f"| **mean ± std over seeds** | {cells} |")
    print("\nPer speaker: the mean over seeds. Last row: the mean of the per-seed means ± their sample std.")
    write_json(args.json, {"corpus": first["corpus"], "speakers": speakers, "seeds": args.seeds, "recipes": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
