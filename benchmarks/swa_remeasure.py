"""Re-measure the BN statistics of finished SWA folds with the corrected final step.

    python benchmarks/swa_remeasure.py runs/emodb.npz runs/select_emodb/swa

Until commit c9a2690 ("SWA: BN statistics measured on a seeded shuffle"), SWA measured the BN statistics of its
averaged weights on the training part in stored order, that is class by class, so each batch
held about one class. Training itself was right: the averaged weights a fold saved are the ones
the corrected code averages. The corrected final step (timnet.recipe.measure_bn with the fold's
seed) depends only on those weights, the training part, the batch size and the seed, so running
it on a saved fold model gives exactly the model that training with the corrected code ends
with. This script does that for every finished fold of a validation-only SWA run (single
model), rewrites the fold's model.pt and its validation figures in result.json, and leaves the
last weights' figures (no BN measurement involved) as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _common import run_main
from timnet.checkpoint import load_checkpoint, save_checkpoint
from timnet.features import load_features
from timnet.files import write_json
from timnet.recipe import measure_bn
from timnet.rundir import read_identity
from timnet.train import evaluate_split, fold_seed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features")
    p.add_argument("run_dir", type=Path)
    args = p.parse_args()
    identity = read_identity(args.run_dir)
    config = identity["train_config"]
    if not config["swa_epochs"] or config["members"] != 1 or identity["evaluate_test"]:
        print(f"{args.run_dir}: expected a validation-only single-model SWA run", file=sys.stderr)
        return 2
    fs = load_features(args.features)
    torch.set_num_threads(1)
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    for result_path in sorted(args.run_dir.glob("fold_*/result.json")):
        fdir = result_path.parent
        result = json.loads(result_path.read_text())
        model, ckpt = load_checkpoint(fdir / "model.pt")
        tr, va = (torch.tensor(ckpt["extra"][k]) for k in ("train_idx", "val_idx"))
        measure_bn(model, x[tr], config["batch_size"], fold_seed(identity["seed"], result["fold"]))
        v = evaluate_split(model, x[va], y[va], n_classes=len(fs.labels))
        before = result["val_uar"]
        result.update(val_war=v["war"], val_uar=v["uar"], val_loss=v["loss"])
        save_checkpoint(fdir / "model.pt", model, feature_config=ckpt["feature_config"], labels=tuple(ckpt["labels"]),
                        corpus=ckpt["corpus"], extra=ckpt["extra"])
        write_json(result_path, result)
        print(f"{fdir.name}: validation UAR {before:.4f} -> {v['uar']:.4f} (last weights {result['val_uar_last']:.4f})")
    return 0


if __name__ == "__main__":
    run_main(main)
