"""Evaluate one model per fold on that fold's test split, and summarise as INTERFACE.md's JSON."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoint import load_checkpoint
from .errors import TimnetError
from .features import FeatureConfig, FeatureSet
from .folds import make_folds
from .keras_import import check_corpus_levels, keras_fold_files, load_keras_weights, warn_if_named_for_another_corpus
from .model import TIMNet, TIMNetEnsemble, has_nonfinite_weights
from .rundir import (RUN_FILE, check_not_all_data, check_not_multi_seed, diverged_folds, diverged_words,
                     features_fingerprint, fold_files, read_fold_result, read_identity, unfinished_words)


@torch.no_grad()
def predict_proba(model: TIMNet, x: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities (N, classes), fused features (N, C)) of a model in eval mode; an
    ensemble's features are its members' side by side (N, members * C)."""
    model.eval()
    probs, fused = [], []
    for start in range(0, len(x), batch_size):
        logits, z = model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])), return_features=True)
        probs.append(logits.softmax(-1).numpy())
        fused.append(z.numpy())
    return np.concatenate(probs), np.concatenate(fused)


@dataclass
class FoldModel:
    """A fold's model and the test indices it must be evaluated on."""

    fold: int
    model: TIMNet | TIMNetEnsemble
    test_idx: np.ndarray


def _check_fits(model: TIMNet | TIMNetEnsemble, fs: FeatureSet, source: Path) -> None:
    config = model.config
    if has_nonfinite_weights(model):  # as predict and export refuse it: every utterance would get one class
        raise TimnetError(f"{source}: non-finite (NaN or inf) weights; expected a trained model")
    if config.n_classes != len(fs.labels):
        raise TimnetError(f"{source}: model has {config.n_classes} classes; the {fs.corpus} features have {len(fs.labels)}")
    if config.n_features != fs.x.shape[2]:
        raise TimnetError(f"{source}: model expects {config.n_features} MFCCs per frame; the features have {fs.x.shape[2]}")


def fold_models(weights: str | Path, fs: FeatureSet, *, folds: int, seed: int, split: str = "random") -> list[FoldModel]:
    """Per-fold models from a timnet RUN_DIR (its saved test indices) or a folder of the authors' HDF5 files."""
    weights = Path(weights)
    if not weights.is_dir():
        what = "a file, not a folder" if weights.exists() else "no such weights folder"
        raise TimnetError(f"{weights}: {what}; expected a RUN_DIR or a folder of 10-fold_weights_best_<k>.hdf5")

    check_not_multi_seed(weights)
    run_ckpts = fold_files(weights, "model.pt")
    if not run_ckpts and (weights / RUN_FILE).is_file():
        check_not_all_data(weights)
        if lost := diverged_folds(weights):
            raise TimnetError(f"{weights}: a sweep trial whose folds hold no model ({diverged_words(lost)}); expected a "
                              "RUN_DIR with trained folds")
        raise TimnetError(f"{weights}: a RUN_DIR with no finished fold (no fold_*/model.pt); "
                          "`timnet train` with the same arguments resumes it")
    if run_ckpts:
        identity = read_identity(weights)
        if identity.get("features_fingerprint") != features_fingerprint(fs):
            these = fs.path or f"these {fs.corpus} features"
            raise TimnetError(f"{weights} was trained on other features than {these}; "
                              "its test indices would point at other utterances; expected the features it was "
                              "trained on (its run.json names them)")
        out = []
        for path in run_ckpts:
            model, ckpt = load_checkpoint(path)
            _check_fits(model, fs, path)
            test_idx = np.asarray(ckpt["extra"]["test_idx"], dtype=np.int64)
            if ckpt["extra"].get("n_samples") != len(fs):
                raise TimnetError(f"{path}: trained on {ckpt['extra'].get('n_samples')} samples; these features have {len(fs)}")
            out.append(FoldModel(int(ckpt["extra"]["fold"]), model, test_idx))
        tested = np.concatenate([fm.test_idx for fm in out])
        if len(np.unique(tested)) < len(tested):  # folds of two splits (a run resumed on other speaker ids)
            raise TimnetError(f"{weights}: its folds' test utterances overlap, so they are not the folds of one "
                              "split; expected a RUN_DIR whose folds were all made alike (train it again into a new RUN_DIR)")
        _warn_other_speakers(weights, fs, out)
        return out
    if not any(weights.glob("*.hdf5")):
        raise TimnetError(f"{weights}: no fold_*/model.pt and no .hdf5 files; expected a RUN_DIR of `timnet train` "
                          "or a folder of the authors' 10-fold_weights_best_<k>.hdf5")
    if folds != 10:
        # The authors' files are the 10 models of a 10-fold split; any other split would test
        # them on utterances they were trained on.
        raise TimnetError(f"--folds {folds}: the authors' weights are one model per fold of a 10-fold split; expected --folds 10")
    loaded = []
    for path in keras_fold_files(weights, folds):
        model = load_keras_weights(path)
        _check_fits(model, fs, path)
        check_corpus_levels(model, fs.corpus, path)
        if not loaded:  # the first file says whose weights these are; the split is checked before nine more load
            _check_authors_split(weights, fs, seed=seed, split=split)
            warn_if_named_for_another_corpus(weights, fs.corpus, given_by="--corpus" if fs.meta.get("source") == "authors-npy"
                                             else f"the features ({fs.path} holds {fs.corpus}'s)")
        loaded.append(model)
    splits = make_folds(len(fs), folds=folds, seed=seed, split=split, speakers=fs.speakers, source=fs.path)
    return [FoldModel(k, model, splits[k - 1][1]) for k, model in enumerate(loaded, start=1)]


def _check_authors_split(weights: Path, fs: FeatureSet, *, seed: int, split: str) -> None:
    """The authors' files hold no test indices: their folds are re-derived from the full corpus in
    the authors' order, shuffled with the corpus's paper seed. On anything else (a subset, another
    seed, speaker folds) the re-derived "test" folds hold utterances the models were trained on,
    and the scores would look excellent and mean nothing, so refuse."""
    from .corpora import CORPORA

    corpus = CORPORA.get(fs.corpus.upper())
    if corpus is None or corpus.n_files is None:
        raise TimnetError(f"{weights}: the authors' weights are for the six paper corpora; "
                          f"these features are {fs.corpus!r}")
    if split != "random":
        raise TimnetError(f"--split {split}: the authors' weights were trained on random 10-fold splits")
    if seed != corpus.seed:
        raise TimnetError(f"--seed {seed}: the authors' {corpus.name} weights were trained on the folds of seed "
                          f"{corpus.seed}; any other seed tests them on utterances they were trained on")
    counts = tuple(np.bincount(fs.y, minlength=len(fs.labels)).tolist())
    if len(fs) != corpus.n_files or (corpus.class_counts and counts != corpus.class_counts):
        raise TimnetError(f"{fs.path or 'the features'}: {len(fs)} {corpus.name} utterances, {counts} per class; "
                          f"the authors' folds are those of the full corpus, {corpus.n_files} utterances "
                          f"{corpus.class_counts} (on a subset their test folds would hold training utterances)")
    frames = FeatureConfig(signal_length=corpus.signal_length).frames
    # the network takes any length, but the figures are not the authors' then (an authors' .npy file
    # of another length is named when it is read)
    if fs.x.shape[1] != frames and fs.meta.get("source") != "authors-npy":
        warnings.warn(f"{fs.path or 'the features'}: {fs.x.shape[1]} frames per utterance; the authors' "
                      f"{corpus.name} weights were trained on {frames} ({corpus.signal_length} samples), "
                      f"so these figures are not theirs (extract without --signal-length)", stacklevel=2)


def score_weights(fs: FeatureSet, weights: str | Path, *, seed: int | None = None, folds: int | None = None,
                 order: str | None = None) -> tuple[dict, dict[str, np.ndarray], FeatureSet]:
    """Score a RUN_DIR (each fold model on the test indices it saved) or a folder of the authors'
    weights (their folds re-derived from `seed` and `folds`, default the corpus's paper seed and 10)
    on features `fs`: (summary, per-sample outputs, the features in the sample order used).

    `order` None takes the models' own sample order (timnet.features.ORDERS). A RUN_DIR knows its
    seed and folds: others given are ignored with a warning, as is testing an unfinished run, whose
    summary then has `run_folds_n`, the folds it will have."""
    from .corpora import paper_seed
    from .features import in_order

    run_file = Path(weights) / RUN_FILE
    if run_file.is_file() and order is not None:
        own = trained_order(fs, run_file)
        trained = read_identity(weights).get("features_fingerprint")
        if order != own and features_fingerprint(in_order(fs, order)) != trained == features_fingerprint(in_order(fs, own)):
            raise TimnetError(f"--order {order}: {weights} was trained on these features in the {own} order, and its "
                              f"folds' test indices point into that order; leave --order out")
    order = order or trained_order(fs, run_file)
    fs = in_order(fs, order)
    if not run_file.is_file() and order == "spec" and fs.files is not None and \
            (in_order(fs, "authors").files != fs.files).any():
        warnings.warn(f"--order spec: the authors' {fs.corpus} weights were trained on the folds of their own sample "
                      f"order, which is not --order spec's for these files: their models have seen much of these test folds")
    split, used_seed = "random", paper_seed(fs.corpus, seed)
    results, outputs = evaluate(fs, fold_models(weights, fs, folds=10 if folds is None else folds, seed=used_seed))
    identity = read_identity(weights) if run_file.is_file() else None
    if identity is not None and identity.get("evaluate_test") is False:
        # a sweep's trial, a recipe candidate: kept off the test folds so that they are chosen on validation
        warnings.warn(f"{weights} is a validation-only run (a sweep's trial or a recipe candidate): comparing such "
                      "runs by these test figures, or choosing one by them, is choosing on test data; a sweep "
                      "tests each fold's choice once itself (its sweep.json)")
    if identity is not None:
        for option, given, own in (("--seed", seed, identity["seed"]), ("--folds", folds, identity["folds"])):
            if given is not None and given != own:
                warnings.warn(f"{option} {given} ignored: {weights} tests each fold model on its own test indices "
                              f"({identity['folds']} folds, seed {identity['seed']})")
        split, used_seed = identity["split"], identity["seed"]
    summary = summarize(results, corpus=fs.corpus, labels=fs.labels, split=split, seed=used_seed)
    # which decides the folds: the authors' CASIA weights score 0.934 in theirs, 0.99 in SPEC's; an
    # authors' .npy (no file names to sort by) is in their order as it stands
    summary["order"] = "authors" if fs.files is None else order
    if identity is not None and len(results) < identity["folds"]:
        warnings.warn(f"{weights}: {unfinished_words(weights, len(results), identity['folds'])}; the means cover those")
        summary["run_folds_n"] = identity["folds"]  # folds_n counts the finished ones: the JSON says the run is not whole
    return summary, outputs, fs


def trained_order(fs: FeatureSet, run_file: Path) -> str:
    """The sample order a model's folds were made on: a RUN_DIR's is the one whose features it was
    trained on (its run.json's fingerprint); the authors' weights were made on their own order."""
    from .features import in_order

    if not run_file.is_file():
        return "authors" if fs.files is not None else "spec"  # an authors' .npy is in their order already
    own = read_identity(run_file.parent).get("features_fingerprint")
    if fs.files is not None and own != features_fingerprint(fs) and own == features_fingerprint(in_order(fs, "authors")):
        return "authors"
    return "spec"


def _warn_other_speakers(run_dir: Path, fs: FeatureSet, models: list[FoldModel]) -> None:
    """Say when these features name other speakers for a fold's test utterances than the run recorded
    (the same audio extracted with another --speaker-pattern: the fingerprint covers the features and
    labels, not the speaker ids). The figures stay right, the test indices being the run's; the speakers
    `test` reports would be these features' names."""
    if fs.speakers is None:
        return
    other = []
    for fm in models:
        done = run_dir / f"fold_{fm.fold:02d}" / "result.json"
        try:
            was = read_fold_result(done).get("test_speakers") if done.is_file() else None
        except TimnetError:  # a damaged result: the model is what `test` scores, and it loaded
            continue
        # as strings: a FeatureSet made in Python may hold integer ids, saved features hold text
        if was and sorted(set(map(str, fs.speakers[fm.test_idx].tolist()))) != sorted(map(str, was)):
            other.append(fm.fold)
    if other:
        warnings.warn(f"{run_dir}: these features name other speakers for the test utterances of fold "
                      f"{', '.join(map(str, sorted(other)))} than the run recorded (extracted with another "
                      "--speaker-pattern?); the figures are the run's folds', the test speakers shown are these "
                      "features' names", stacklevel=3)


def evaluate(fs: FeatureSet, models: list[FoldModel]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per-fold results and per-sample outputs (probs, fused, test_fold) of every test sample."""
    n, c = len(fs), len(fs.labels)
    probs = np.full((n, c), np.nan, dtype=np.float32)
    fused = None  # its width is the model's: C, or members * C for an ensemble
    test_fold = np.zeros(n, dtype=np.int64)
    results = []
    for fm in models:
        p, z = predict_proba(fm.model, fs.x[fm.test_idx])
        if fused is None:
            fused = np.full((n, z.shape[1]), np.nan, dtype=np.float32)
        probs[fm.test_idx], fused[fm.test_idx], test_fold[fm.test_idx] = p, z, fm.fold
        results.append(fold_result(fm.fold, fs, fm.test_idx, p.argmax(1)))
    return results, {"probs": probs, "fused": fused, "test_fold": test_fold}


def fold_result(fold: int, fs: FeatureSet, test_idx: np.ndarray, pred: np.ndarray) -> dict:
    """One fold's entry of the results JSON."""
    cm = metrics.confusion_matrix(fs.y[test_idx], pred, n_classes=len(fs.labels))
    # none where the features name none (a folders tree extracted without --speaker-pattern: all "")
    speakers = sorted(set(fs.speakers[test_idx].tolist()) - {""}) if fs.speakers is not None else []
    return {"fold": fold, "war": metrics.war(cm), "uar": metrics.uar(cm), "n_test": int(len(test_idx)),
            "test_speakers": speakers, "confusion": cm.tolist()}


def summarize(fold_results: list[dict], *, corpus: str, labels: tuple[str, ...], split: str, seed: int) -> dict:
    """INTERFACE.md's results JSON: per-fold entries, means and (population) standard deviations."""
    wars = np.array([r["war"] for r in fold_results])
    uars = np.array([r["uar"] for r in fold_results])
    return {
        "corpus": corpus, "split": split, "folds_n": len(fold_results), "seed": seed, "labels": list(labels),
        "folds": fold_results,
        "mean_war": float(wars.mean()), "mean_uar": float(uars.mean()),
        # ddof 0: the folds are the whole split, not a sample of folds (seeds are: run.summarize_seeds)
        "std_war": float(wars.std()), "std_uar": float(uars.std()),
    }


def format_report(summary: dict) -> str:
    """A readable table of folds, mean ± std, and per-class figures pooled over folds."""
    of = f" of {summary['run_folds_n']} (an unfinished run)" if "run_folds_n" in summary else ""
    order = f"  order={summary['order']}" if "order" in summary else ""
    lines = [f"{summary['corpus']}  split={summary['split']}  folds={summary['folds_n']}{of}  seed={summary['seed']}{order}", "",
             f"{'fold':>4} {'n_test':>6} {'WAR':>7} {'UAR':>7}"]
    for r in summary["folds"]:
        lines.append(f"{r['fold']:>4} {r['n_test']:>6} {r['war']:>7.4f} {r['uar']:>7.4f}")
    lines.append(f"{'mean':>4} {'':>6} {summary['mean_war']:>7.4f} {summary['mean_uar']:>7.4f}")
    lines.append(f"{'std':>4} {'':>6} {summary['std_war']:>7.4f} {summary['std_uar']:>7.4f}")
    cm = np.sum([np.array(r["confusion"]) for r in summary["folds"]], axis=0)
    pc = metrics.per_class(cm)
    lines += ["", f"{'class':>10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}"]
    for i, name in enumerate(summary["labels"]):
        # a class no test split holds has no recall (nor F1): not a 0 beside the others
        recall, f1 = (f"{pc['recall'][i]:>7.4f}", f"{pc['f1'][i]:>7.4f}") if pc["support"][i] else (f"{'-':>7}",) * 2
        # nor has a class never predicted a precision
        precision = f"{pc['precision'][i]:>9.4f}" if pc["predicted"][i] else f"{'-':>9}"
        lines.append(f"{name:>10} {precision} {recall} {f1} {pc['support'][i]:>7d}")
    if summary["split"] == "random":
        lines += ["", "note: random (utterance-level) folds put the same speakers in training and test."]
    return "\n".join(lines)
