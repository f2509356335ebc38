"""Table: the authors' CASIA folds, recovered from their sample order.

    python benchmarks/authors_casia_order.py runs/casia.npz ../shared/pretrained/CASIA_32 --json casia_order.json

The authors' fold-k model was trained on nine tenths of their feature file and never saw the
k-th tenth of KFold(10, shuffle=True, random_state=32) over *their* order. On SPEC.md's order
(classes, then the natural order of the path) their models score far above their own leaky
figure (0.9467), so they have seen most of what that order calls their test folds. This script
scores, for each candidate order, every fold-k model on that order's k-th test fold: the right
order brings the mean down to what a model scores on unseen utterances (about their 0.9467); a
score near the models' accuracy on their training data (0.99) means the order is not theirs.
Candidates: within each class (or speaker-major), the four speakers in every one of the 24
orders, files by number; within each class, files by number and then the speakers in every
order (as their extraction, which natsorts the file names of one folder per class, would list
same-named files); and `timnet --order authors` (timnet.features.in_order).
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from sklearn.model_selection import KFold

from _common import run_main, write_json
from timnet.evaluate import predict_proba
from timnet.features import in_order, load_features
from timnet.keras_import import keras_fold_files, load_keras_weights


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="timnet's CASIA .npz (`timnet extract casia ...`)")
    p.add_argument("weights", help="the folder of the authors' 10-fold_weights_best_<k>.hdf5 for CASIA")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    torch.set_num_threads(1)
    fs = load_features(args.features)
    n = len(fs)
    # every model's prediction for every utterance, once
    pred = np.stack([predict_proba(load_keras_weights(f), fs.x)[0].argmax(1) for f in keras_fold_files(args.weights, 10)])
    correct = pred == fs.y[None, :]
    speaker = np.array([f.split("/")[0] for f in fs.files])
    number = np.array([int("".join(c for c in f.rsplit("/", 1)[1] if c.isdigit()) or 0) for f in fs.files])
    folds = [te for _, te in KFold(10, shuffle=True, random_state=32).split(np.zeros(n))]

    def score(order: np.ndarray) -> float:
        """Mean over k of model k's accuracy on the k-th test fold of `order` (order[i] = utterance at position i)."""
        return float(np.mean([correct[k, order[te]].mean() for k, te in enumerate(folds)]))

    rows = [{"order": "SPEC.md (timnet --order spec)", "score": score(np.arange(n))}]
    position = {f: i for i, f in enumerate(fs.files)}
    rows.append({"order": "timnet --order authors (by file name, then path ignoring case)",
                 "score": score(np.array([position[f] for f in in_order(fs, "authors").files]))})
    for perm in itertools.permutations(sorted(set(speaker))):
        rank = {s: i for i, s in enumerate(perm)}
        keys = {"class first, speakers": lambda i: (fs.y[i], rank[speaker[i]], number[i]),
                "speaker first, speakers": lambda i: (rank[speaker[i]], fs.y[i], number[i]),
                "class first, files by number, then speakers": lambda i: (fs.y[i], number[i], rank[speaker[i]])}
        for name, key in keys.items():
            rows.append({"order": f"{name} {' '.join(perm)}", "score": score(np.array(sorted(range(n), key=key)))})
    print("### The authors' CASIA models on the test folds of candidate sample orders\n")
    print(f"accuracy of their models on all {n} utterances: "
          f"{' '.join(f'{a:.4f}' for a in correct.mean(1))} (fold 1..10)\n")
    print("| order | mean accuracy of model k on fold k |\n|---|---:|")
    ranked = sorted(rows, key=lambda r: r["score"])
    for r in ranked[:5] + [r for r in ranked[5:] if r["order"].startswith(("SPEC", "timnet"))]:
        print(f"| {r['order']} | {r['score']:.4f} |")
    print(f"\n({len(rows)} orders tried; the five lowest shown, and timnet's two)")
    write_json(args.json, {"model_accuracy_all": correct.mean(1).tolist(), "orders": ranked})
    return 0


if __name__ == "__main__":
    run_main(main)
