"""Figures: parity with the authors' TensorFlow outputs on EMODB (../shared/reference).

    python benchmarks/parity.py runs/emodb.npz --json parity.json

FEATURES comes from `timnet extract emodb ../shared/data/EMODB`. The reference holds the authors'
features (`mfcc`), and their released fold models' probabilities (`probs`) and fused features
(`fused`) on them, each sample scored by the model of the fold that tests it. This prints:
- the largest difference between timnet's features and theirs (the MFCCs are in dB);
- with their weights imported, the largest differences of probabilities and fused features, on
  their features and on timnet's, and the per-fold WAR/UAR against their JSON.
The real-data tests assert these with margins; this script gives the measured figures.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import run_main, write_json
from timnet.corpora import paper_seed
from timnet.evaluate import evaluate, fold_models
from timnet.features import load_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="timnet's EMODB features (`timnet extract emodb ...`)")
    p.add_argument("--reference", default=str(SHARED / "reference" / "emodb_official_reference.npz"))
    p.add_argument("--weights", default=str(SHARED / "pretrained" / "EMODB_46"), help="the authors' EMODB fold files")
    p.add_argument("--json", required=True, help="where to write the figures")
    args = p.parse_args()

    ours = load_features(args.features)
    ref = np.load(args.reference)
    names = [Path(f).name for f in ours.files]
    if names != [str(f) for f in ref["files"]]:
        raise SystemExit(f"{args.features}: not the reference's files in the reference's order")
    theirs = replace(ours, x=ref["mfcc"].astype(np.float32))
    reference = json.loads(Path(args.reference).with_suffix(".json").read_text())
    reference_folds = {f["fold"]: f for f in reference["per_fold"]}

    d = np.abs(ours.x.astype(np.float64) - theirs.x)
    worst = np.unravel_index(d.argmax(), d.shape)
    out = {"features_max_abs_db": float(d.max()), "features_worst": {"file": names[worst[0]], "frame": int(worst[1]),
                                                                    "coefficient": int(worst[2])},
           "features_equal_fraction": float((d == 0).mean())}
    models = fold_models(args.weights, ours, folds=10, seed=paper_seed(ours.corpus))
    for name, fs in (("their_features", theirs), ("timnet_features", ours)):
        results, outputs = evaluate(fs, models)
        out[name] = {
            "probs_max_abs": float(np.abs(outputs["probs"] - ref["probs"]).max()),
            "fused_max_abs": float(np.abs(outputs["fused"] - ref["fused"]).max()),
            "fold_of_each_sample_agrees": bool((outputs["test_fold"] == ref["test_fold"]).all()),
            # fold by fold number (a missing fold is a KeyError, not a silent shift)
            "war_max_abs": max(abs(r["war"] - reference_folds[r["fold"]]["war"]) for r in results),
            "uar_max_abs": max(abs(r["uar"] - reference_folds[r["fold"]]["uar"]) for r in results),
            "mean_war": float(np.mean([r["war"] for r in results])),
            "mean_uar": float(np.mean([r["uar"] for r in results])),
        }
    out["reference"] = {"mean_war": reference["mean_war"], "mean_uar": reference["mean_uar"]}
    print(report(out))
    write_json(args.json, out)
    return 0


def report(o: dict) -> str:
    w = o["features_worst"]
    lines = ["| figure | on their features | on timnet's features |", "|---|---:|---:|"]
    a, b = o["their_features"], o["timnet_features"]
    for key, label, fmt in (("probs_max_abs", "probabilities, max abs difference", ".1e"),
                            ("fused_max_abs", "fused features, max abs difference", ".1e"),
                            ("war_max_abs", "per-fold WAR, max abs difference", ".4f"),
                            ("uar_max_abs", "per-fold UAR, max abs difference", ".4f"),
                            ("mean_war", f"mean WAR (reference {o['reference']['mean_war']:.4f})", ".4f"),
                            ("mean_uar", f"mean UAR (reference {o['reference']['mean_uar']:.4f})", ".4f")):
        lines.append(f"| {label} | {a[key]:{fmt}} | {b[key]:{fmt}} |")
    return (f"features: max abs difference {o['features_max_abs_db']:.2e} dB ({w['file']}, frame {w['frame']}, "
            f"coefficient {w['coefficient']}); {o['features_equal_fraction']:.1%} of values bit-identical\n\n"
            + "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
