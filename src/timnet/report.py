"""Figures and a one-page HTML report of a RUN_DIR (see timnet.run for its layout).

RUN_DIR/plots/curves.{png,svg}      loss and accuracy per epoch, mean ± std over folds
RUN_DIR/plots/confusion.{png,svg}   confusion matrix summed over folds
RUN_DIR/plots/confusion_folds.{png,svg}  each fold's own confusion matrix
RUN_DIR/plots/recall.{png,svg}      per-class recall, pooled over folds
RUN_DIR/plots/tsne.{png,svg}        t-SNE of every test sample's fused features (needs the features file)
RUN_DIR/report.html                 protocol, per-fold table, figures, environment; works offline
"""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import shlex
import warnings
from pathlib import Path

import numpy as np

from . import metrics
from .errors import TimnetError
from .features import FeatureSet
from .files import atomic_write
from .plots import confusion_figure, curves_figure, fold_confusions_figure, recall_figure, save_figure, tsne_figure
from .rundir import (RUN_FILE, check_not_all_data, check_not_multi_seed, diverged_words, features_fingerprint,
                     fold_files, history_name, read_fold_result, read_identity, refuse_foreign_figures)

PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
FIGURE_CAPTIONS = {
    "curves": "Training curves: mean over the folds' trainings (every member's, for an ensemble), band ±1 std. The "
              "train series are of the batches as trained (dropout, label smoothing, any augmentation; under mixup "
              "the accuracy counts each mixed pair's first label, so it sits far below the test accuracy).",
    "confusion": "Confusion matrix summed over the folds' test splits; colours are row-normalised.",
    "confusion_folds": "The confusion matrix of each fold's test split on its own, with the fold's WAR and UAR.",
    "recall": "Per-class recall pooled over the folds' test splits; whiskers ±1 std of the folds' own recalls.",
    "tsne": "t-SNE of the fused (penultimate) features of every test sample (an ensemble's: its members' side "
            "by side), one panel per fold: each fold's model has its own feature space, so samples are embedded "
            "with the other test samples of their fold.",
}


def printable(text) -> str:
    """`text` with the bytes of a name that was not UTF-8 (an old Latin-1 zip's "Jos\\xe9", kept by
    Python as surrogates) shown as \\xe9: matplotlib and a UTF-8 page cannot take them as they are."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _weights_kept(tc: dict) -> str:
    """What each trained network's final weights are, in words."""
    if tc.get("select") == "best-val":
        return "the epoch of best validation UAR"
    if tc.get("swa_epochs"):
        return f"mean of the weights after each of the last {tc['swa_epochs']} epochs (SWA)"
    if tc.get("ema_decay"):
        return f"moving average of the weights (EMA, decay {tc['ema_decay']})"
    return "the last epoch's"


def run_context(identity: dict) -> str:
    """One line saying what a run is: corpus, recipe, protocol (the figures' first title line)."""
    tc = identity.get("train_config") or {}
    members = tc.get("members", 1)
    recipe = f"recipe {tc.get('recipe', 'paper')}" + (f", {members} members" if members > 1 else "")
    if tc.get("swa_epochs"):
        recipe += f", SWA of the last {tc['swa_epochs']} epoch{'s' * (tc['swa_epochs'] > 1)}"
    if tc.get("mixup_alpha"):  # part of `strong` since stop 52: tells its runs from the earlier preset's
        recipe += f", mixup {tc['mixup_alpha']}"
    return (f"{identity['corpus']} · {recipe} · {identity['folds']}-fold {_split_words(identity.get('split'))} CV, "
            f"seed {identity['seed']}")


def _split_words(split: str | None) -> str:
    return "speaker-independent" if split == "speaker" else "utterance-level"


def _evaluation_context(summary: dict, weights: str | Path | None) -> tuple[str, int]:
    """(the figures' first title line, networks per fold) for `timnet test` of a RUN_DIR or of the
    authors' weights (one network per fold)."""
    if weights is None:
        return f"{summary['corpus']} · {summary['folds_n']} folds, seed {summary['seed']}", 1
    weights = Path(weights)
    if (weights / RUN_FILE).is_file():
        identity = _run_info(weights)["identity"]
        members = (identity.get("train_config") or {}).get("members", 1)
        return run_context({**identity, "folds": summary.get("run_folds_n", summary["folds_n"])}), members
    return (f"{summary['corpus']} · the authors' weights ({weights.name}) · {summary['folds_n']}-fold "
            f"{_split_words(summary['split'])} folds, seed {summary['seed']}"), 1


# -- reading a RUN_DIR ---------------------------------------------------------------------------
def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """A fold's history.csv as float arrays by column; empty cells (no validation that epoch) are NaN."""
    expected = "expected the CSV `timnet train` writes"
    if not Path(path).is_file():
        raise TimnetError(f"{path}: missing; {expected} with each fold (restore it, or delete the fold's result.json "
                          "and run the same `timnet train` to train that fold again)")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = [c for c in rows[0] if c is not None] if rows else ["epoch"]
        history = {c: np.array([float(r[c]) if r.get(c) not in (None, "") else np.nan for r in rows]) for c in columns}
    except (ValueError, UnicodeDecodeError, csv.Error) as e:  # a hand-edited or half-copied file
        raise TimnetError(f"{path}: not a readable training history ({e}); {expected}") from None
    if rows and not {"epoch", "loss"} <= set(history):
        raise TimnetError(f"{path}: not a training history (no epoch and loss columns); {expected}")
    return history


def _run_info(run_dir: Path) -> dict:
    if not run_dir.exists():
        raise TimnetError(f"{run_dir}: no such folder; expected a RUN_DIR (from `timnet train`)")
    check_not_multi_seed(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise TimnetError(f"{run_dir}: not a timnet RUN_DIR; expected {path} (from `timnet train`)")
    try:
        info = json.loads(path.read_text())
        readable = (isinstance(info, dict) and isinstance(info.get("identity"), dict) and "labels" in info["identity"]
                    and isinstance(info.get("features"), (str, type(None))))  # the features' path, or none recorded
    except (json.JSONDecodeError, UnicodeDecodeError):
        readable = False
    if not readable:
        raise TimnetError(f"{path}: not a readable timnet run file (a JSON object with an identity)")
    # as training reads it back: options added since the run was written show what older versions did
    return {**info, "identity": read_identity(run_dir)}


def _fold_results(run_dir: Path, labels: list[str]) -> tuple[list[dict], list[int]]:
    """The finished folds' results, by fold, and the folds that diverged (a sweep trial's fold whose
    loss became NaN: no model, history or figures; timnet.sweep), which are not among them; each
    tested fold's confusion checked to be of the run's `labels`."""
    paths = fold_files(run_dir, "result.json")
    results = [read_fold_result(path) for path in paths]
    if not results:
        check_not_all_data(run_dir)
        raise TimnetError(f"{run_dir}: no finished fold (no fold_*/result.json); train it first or wait for a fold to end")
    for path, r in zip(paths, results):
        if "confusion" in r and len(r["confusion"]) != len(labels):
            raise TimnetError(f"{path}: a confusion matrix of {len(r['confusion'])} classes in a run of {len(labels)} "
                              f"({', '.join(labels)}); expected the result of this run's fold: delete it to train that "
                              "fold again")
    lost = sorted(r["fold"] for r in results if r.get("diverged"))
    if len(lost) == len(results):
        raise TimnetError(f"{run_dir}: every finished fold diverged (the loss became NaN or infinite; their "
                          "result.json say where): nothing to draw")
    return sorted((r for r in results if not r.get("diverged")), key=lambda r: r["fold"]), lost


def _summed_confusion(fold_results: list[dict]) -> np.ndarray:
    return np.sum([np.asarray(r["confusion"]) for r in fold_results], axis=0)


def _tsne_unavailable(info: dict, given: str | Path | None = None) -> str | None:
    """Why the t-SNE of a run cannot be drawn (from run.json's features, or the `given` file), or None when it can."""
    if info["identity"].get("evaluate_test") is False:
        return "a validation-only run predicts no test fold"
    if given is not None:
        given = Path(given)
        if given.is_dir():
            return f"{given} is a folder; expected a feature file (the .npz `timnet extract` writes)"
        return None if given.is_file() else f"{given} is not a regular file" if given.exists() else f"{given} does not exist"
    path = info.get("features")
    if not path:
        return "run.json names no features file (the run was not started from a feature file)"
    if not Path(path).is_file():
        return f"the features file {path} named in run.json is missing (moved? `timnet plot RUN_DIR --features PATH`)"
    return None


# -- figures ---------------------------------------------------------------------------------------
def _result_figures(fold_results: list[dict], labels, *, war: float, uar: float, fused: np.ndarray | None,
                    y: np.ndarray | None, folds: np.ndarray | None, seed: int, out_dir: Path, context: str,
                    split: str | None, members: int = 1) -> dict[str, list[Path]]:
    cm = _summed_confusion(fold_results)
    fold_cms = [np.asarray(r["confusion"]) for r in fold_results]
    # names from the user's files may hold bytes that were not UTF-8, which matplotlib cannot draw
    labels, context = [printable(name) for name in labels], printable(context)
    # a speaker-independent fold's test speakers (in a random split every fold holds them all)
    titles = [printable(f"fold {r['fold']}" + (f" ({', '.join(map(str, r['test_speakers']))})"
                                               if split == "speaker" and r.get("test_speakers") else "")) for r in fold_results]
    written = {"confusion": save_figure(confusion_figure(cm, labels, context=context), out_dir / "confusion"),
               "confusion_folds": save_figure(fold_confusions_figure(fold_cms, labels, titles=titles, context=context),
                                    out_dir / "confusion_folds"),
               "recall": save_figure(recall_figure(cm, labels, uar=uar, war=war, fold_cms=fold_cms, context=context),
                                     out_dir / "recall")}
    if fused is not None:
        # an ensemble's fused features are its members' penultimate features side by side
        what = "fused (penultimate) features" if members == 1 else f"penultimate features of the {members} members, concatenated,"
        title = f"t-SNE of the {what} of {len(y)} test samples, per fold model (seed {seed})"
        written["tsne"] = save_figure(tsne_figure(fused, y, labels, seed=seed, title=title, groups=folds, context=context),
                                      out_dir / "tsne")
    return written


def _histories(run_dir: Path, results: list[dict], members: int) -> tuple[list[dict[str, np.ndarray]], list[Path]]:
    """Every training's history, each finished fold's `members` (history.csv, history_member<m>.csv),
    and the files of those missing: a fold the benchmarks' ledger restored holds its result alone."""
    read, missing = [], []
    for r in results:
        fold = run_dir / f"fold_{r['fold']:02d}"
        for m in range(members):
            path = fold / history_name(m)
            if path.is_file():
                read.append(read_history(path))
            else:
                missing.append(path)
    return read, missing


class Figures(dict):
    """The files drawn, by figure name ({name: [png, svg]}), and why any figure was not drawn
    (`skipped`: {name: reason}), which the report page says."""

    def __init__(self, *args, skipped: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = dict(skipped or {})


def plot_run(run_dir: str | Path, *, out_dir: str | Path | None = None, seed: int = 0,
             features: str | Path | None = None) -> Figures:
    """Draw a RUN_DIR's figures into RUN_DIR/plots (PNG and SVG); returns the files by figure name.

    The t-SNE needs the run's features file: run.json's path, or `features` (the same file moved;
    its fingerprint must be the run's). When run.json's is gone it is skipped with a warning (and
    report.html says why) rather than failing the other figures; `features` that cannot serve is an error.
    """
    from .train import check_seed

    check_seed(seed)  # t-SNE's seed: refused before any figure is drawn, not after half of them
    run_dir = Path(run_dir)
    if out_dir is not None and Path(out_dir).resolve() != (run_dir / PLOTS_DIR).resolve():
        refuse_foreign_figures(Path(out_dir), given=f"out_dir {out_dir}")  # the run's own plots/ is timnet's
    out_dir = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    info = _run_info(run_dir)
    if features is not None:
        info = {**info, "features": str(features)}
        if info["identity"].get("evaluate_test") is False:
            raise TimnetError(f"--features {features}: a validation-only run has no t-SNE to draw from them")
    identity = info["identity"]
    results, lost = _fold_results(run_dir, identity["labels"])
    if lost:
        warnings.warn(f"{run_dir}: {diverged_words(lost)}: left out of the figures and the report", stacklevel=2)
    if len(results) + len(lost) < identity.get("folds", 0):  # as `test` and `predict` say it of the same folder
        warnings.warn(f"{run_dir}: only {len(results) + len(lost)} of {identity['folds']} folds are finished; the figures cover those",
                      stacklevel=2)
    context = printable(run_context(identity))
    tc = identity.get("train_config") or {}
    members = tc.get("members", 1)
    histories, missing = _histories(run_dir, results, members)
    tested = "war" in results[0]  # not a sweep trial or a selection run, scored on validation only
    fused = y = folds = reason = None
    if tested:  # the models are read before any figure is written: a damaged one leaves the old figures whole
        reason = _tsne_unavailable(info, features)
        if reason is None:
            fused, y, folds, reason = _run_test_features(run_dir, info, finished={r["fold"] for r in results},
                                                         given=features is not None)
        if reason is not None and features is not None:  # asked for by name: not a figure quietly left out
            raise TimnetError(f"--features {features}: no t-SNE from it: {reason}")
    what = f"{len(results)} folds" + (f" × {members} members" if members > 1 else "")
    written = Figures()
    if missing:  # the other figures need only the folds' results: drawn without the curves they lack
        total = len(histories) + len(missing)
        said = f"{len(missing)} of {total} training histories missing ({missing[0]}{', ...' if len(missing) > 1 else ''})"
        what = f"{len(histories)} of the {total} trainings of {what}"
        if histories:
            warnings.warn(f"{run_dir}: {said}: the curves average the other {len(histories)}", stacklevel=2)
        else:
            warnings.warn(f"{run_dir}: curves skipped: {said}", stacklevel=2)
            written.skipped["curves"] = f"{said}; the folds' results draw the other figures"
            _remove_figure(out_dir / "curves")  # an earlier plot's would stand for this run's
    if histories:
        written["curves"] = save_figure(curves_figure(histories, what=what, swa_epochs=tc.get("swa_epochs") or 0,
                                                      context=context), out_dir / "curves")
    if not tested:
        warnings.warn("a validation-only run has no test predictions: training curves only", stacklevel=2)
        return written
    if reason is not None:
        warnings.warn(f"t-SNE skipped: {reason}", stacklevel=2)
        written.skipped["tsne"] = reason
    wars, uars = [r["war"] for r in results], [r["uar"] for r in results]
    written.update(_result_figures(results, identity["labels"], war=float(np.mean(wars)), uar=float(np.mean(uars)),
                                   fused=fused, y=y, folds=folds, seed=seed, out_dir=out_dir, context=context,
                                   split=identity.get("split"), members=members))
    if reason is not None:  # an earlier plot's would stand beside figures it does not match
        _remove_figure(out_dir / "tsne")
    return written


def _remove_figure(stem: Path) -> None:
    """Delete the figure save_figure wrote at `stem` (its PNG and SVG), no other file of the folder."""
    for suffix in (".png", ".svg"):
        stem.with_suffix(suffix).unlink(missing_ok=True)


def _run_test_features(run_dir: Path, info: dict, *, finished: set[int], given: bool = False) -> tuple:
    """(fused features, true classes, test folds, None) of every test sample of the `finished` folds
    (those with a result.json, which the other figures show), or a reason why not (`given`: the
    features file is the user's --features, not run.json's)."""
    from .evaluate import evaluate, fold_models, trained_order
    from .features import in_order, load_features

    identity = info["identity"]
    try:
        fs = load_features(info["features"], corpus=identity["corpus"], corpus_of=f"the run {run_dir}")
    except TimnetError as e:
        return None, None, None, str(e)
    # the folds' test indices point into the order the run was trained in (`train --order authors`)
    fs = in_order(fs, trained_order(fs, run_dir / RUN_FILE))
    # A features file rewritten since training would pair the models with other utterances.
    if features_fingerprint(fs) != identity.get("features_fingerprint"):
        return None, None, None, (f"{info['features']} holds other features than the run was trained on" if given else
                                  f"the features file {info['features']} has changed since the run was trained")
    if not fold_files(run_dir, "model.pt"):  # folds the benchmarks' ledger restored: their results alone
        return None, None, None, "no fold holds its model (fold_*/model.pt), only its result"
    models = fold_models(run_dir, fs, folds=identity["folds"], seed=identity["seed"], split=identity["split"])
    if lacking := sorted(finished - {m.fold for m in models}):  # a t-SNE of the others would pass for every fold's
        return None, None, None, (f"fold {', '.join(map(str, lacking))} has a result but no model "
                                  f"({run_dir / f'fold_{lacking[0]:02d}' / 'model.pt'} missing)")
    # a fold's model.pt is written a moment before its result.json, and stays if the run is killed between
    _, outputs = evaluate(fs, [m for m in models if m.fold in finished])
    return (*_tested(fs, outputs), None)


def _tested(fs: FeatureSet, outputs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fused features, classes and test folds of the samples some fold tested (folds start at 1)."""
    mask = outputs["test_fold"] > 0
    return outputs["fused"][mask], fs.y[mask], outputs["test_fold"][mask]


def plot_evaluation(fs: FeatureSet, summary: dict, outputs: dict, out_dir: str | Path, *, seed: int = 0,
                    weights: str | Path | None = None) -> dict[str, list[Path]]:
    """Confusion, recall and t-SNE figures of `timnet test` (evaluate.summarize's dict, evaluate's
    outputs); `weights`, the RUN_DIR or authors' folder tested, is named in the titles."""
    refuse_foreign_figures(Path(out_dir), given=f"out_dir {out_dir}")
    fused, y, folds = _tested(fs, outputs)
    context, members = _evaluation_context(summary, weights)
    written = _result_figures(summary["folds"], fs.labels, war=summary["mean_war"], uar=summary["mean_uar"],
                              fused=fused, y=y, folds=folds, seed=seed, out_dir=Path(out_dir), context=context,
                              split=summary.get("split"), members=members)
    _remove_figure(Path(out_dir) / "curves")  # a run's curves drawn here before: not of these weights
    return written


# -- the HTML page ---------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.headline { font-size: 1.25em; margin: 0.6em 0; } .muted { color: #666; } .note { background: #fff6dd; padding: 0.5em 0.8em; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; } tfoot td { font-weight: bold; background: #fafafa; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f3f3f3; padding: 0.1em 0.3em; word-break: break-all; }
"""


def _e(value) -> str:
    return html.escape(printable(value))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _kv_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _protocol(info: dict, results: list[dict], lost: list[int], run_dir: Path) -> str:
    ident = info["identity"]
    tc = ident.get("train_config", {})
    done = f"{len(results) + len(lost)} of {ident['folds']}" + (
        "" if len(results) + len(lost) == ident["folds"] else " (run incomplete)") + (
        f"; {diverged_words(lost)}" if lost else "")
    members = tc.get("members", 1)
    rows = [("corpus", ident["corpus"]), ("utterances", ident["n_samples"]),
            ("classes", ", ".join(ident["labels"])), ("split", ident["split"]), ("folds done", done),
            ("seed", ident["seed"]), ("recipe", tc.get("recipe", "paper")),
            ("networks per fold", f"{members}, their probabilities averaged" if members > 1 else 1),
            ("epochs", tc.get("epochs")), ("weights kept", _weights_kept(tc))]
    if tc.get("val_fraction"):
        rows += [("validation fraction", tc.get("val_fraction")), ("validation every", f"{tc.get('eval_every')} epochs"),
                 ("patience", tc.get("patience") or "none")]
    rows += [("batch size", tc.get("batch_size")), ("learning rate", tc.get("lr"))]
    if tc.get("adam_eps_rule", "torch") != "torch":
        rows.append(("Adam epsilon", f"{tc.get('adam_eps')}, added as {tc['adam_eps_rule']} adds it"))
    if tc.get("lr_schedule", "constant") != "constant" or tc.get("warmup_epochs"):
        rows.append(("learning-rate schedule", f"{tc.get('lr_schedule')}, warm-up {tc.get('warmup_epochs') or 0} epochs"))
    from .recipe import AUGMENTATIONS  # here: it imports torch, which the rest of a report does not need

    augment = [f"{k.replace('_', ' ')} {v}" for k, v in tc.items() if k in AUGMENTATIONS and v]
    if augment:
        rows.append(("augmentation", ", ".join(augment)))
        if tc.get("plain_members"):
            rows.append(("plain members", f"the first {tc['plain_members']} of {tc.get('members')} without augmentation"))
    rows += [("label smoothing", tc.get("label_smoothing")), ("features", info.get("features")), ("run directory", run_dir.resolve())]
    out = _kv_table(rows)
    if ident["split"] == "random":
        out += ('<p class="note">Random (utterance-level) folds put the same speakers in training and test; '
                "speaker-independent figures need <code>--split speaker</code>.</p>")
    return out


def _scored(results: list[dict]) -> tuple[str, str]:
    """The keys of a fold's scores and the name of what they score: the test fold, or for a
    validation-only run (sweep trials, recipe selection) the validation share."""
    return ("", "test") if "war" in results[0] else ("val_", "validation")


def _fold_model(r: dict, tc: dict) -> str:
    """What a fold's model is: its epoch, or the span its weights average, and its members."""
    if tc.get("swa_epochs") and tc.get("select") != "best-val":
        end = r.get("epochs_run") or tc.get("epochs")
        what = f"SWA of epochs {end - tc['swa_epochs'] + 1}–{end}"
    else:
        # each member's when they differ (each stops early on its own); the fold's figures are its first's
        each = r.get("member_epochs") or [{"epoch": r.get("epoch"), "epochs_run": r.get("epochs_run"),
                                           "stopped_early": r.get("stopped_early")}]
        if any(m != each[0] for m in each):
            return "members: " + "; ".join(_epoch_words(m, tc.get("epochs")) for m in each)
        what = _epoch_words(each[0], tc.get("epochs"))
    return what + (f", {tc['members']} members" if tc.get("members", 1) > 1 else "")


def _epoch_words(m: dict, budget: int | None) -> str:
    # older results said "stopped early" of patience running out at the last epoch too
    early = m["stopped_early"] and not (budget and m["epochs_run"] and m["epochs_run"] >= budget)
    return f"epoch {m['epoch']} of {m['epochs_run']}" + (" (stopped early)" if early else "")


def _fold_table(results: list[dict], identity: dict) -> str:
    key, split = _scored(results)
    n = "n_test" if split == "test" else "n_val"
    tc = identity.get("train_config") or {}
    # a validation share's speakers are not recorded; random folds hold every speaker
    speakers = split == "test" and identity.get("split") == "speaker"
    num = '<td class="num">'
    rows = []
    for r in results:
        epoch = _fold_model(r, tc)
        who = f"<td>{_e(', '.join(map(str, r.get('test_speakers', []))))}</td>" if speakers else ""
        rows.append(f"<tr>{num}{_e(r['fold'])}</td>{num}{_e(r[n])}</td>{who}{num}{_pct(r[key + 'war'])}</td>"
                    f"{num}{_pct(r[key + 'uar'])}</td><td>{_e(epoch)}</td></tr>")
    wars, uars = np.array([r[key + "war"] for r in results]), np.array([r[key + "uar"] for r in results])
    foot = (f"<tr><td>mean ± std</td>{num}{sum(r[n] for r in results)}</td>{'<td></td>' if speakers else ''}"
            f"{num}{_pct(wars.mean())} ± {_pct(wars.std())}</td>{num}{_pct(uars.mean())} ± {_pct(uars.std())}</td>"
            "<td></td></tr>")
    head = (f"<tr><th>fold</th><th>{n}</th>{'<th>test speakers</th>' if speakers else ''}<th>{split} WAR %</th>"
            f"<th>{split} UAR %</th><th>model</th></tr>")
    return f'<table id="folds"><thead>{head}</thead><tbody>{"".join(rows)}</tbody><tfoot>{foot}</tfoot></table>'


def _class_table(results: list[dict], labels) -> str:
    pc = metrics.per_class(_summed_confusion(results))
    # a class no test split holds has no recall (nor F1): not a 0 beside the others
    tested = [(_pct(pc["recall"][i]), _pct(pc["f1"][i])) if pc["support"][i] else ("–", "–") for i in range(len(labels))]
    precision = [_pct(pc["precision"][i]) if pc["predicted"][i] else "–" for i in range(len(labels))]  # never predicted
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=\"num\">{precision[i]}</td>"
                   f"<td class=\"num\">{tested[i][0]}</td><td class=\"num\">{tested[i][1]}</td>"
                   f"<td class=\"num\">{int(pc['support'][i])}</td></tr>" for i, name in enumerate(labels))
    head = "<tr><th>class</th><th>precision %</th><th>recall %</th><th>F1 %</th><th>support</th></tr>"
    return f'<table id="classes"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _figures(figures: dict[str, list[Path]], skipped: dict[str, str], run_dir: Path) -> str:
    """The figures embedded, with their captions, and a note for each one not drawn (`skipped`: {name: why})."""
    parts = []
    for name, paths in figures.items():
        png = next((Path(p) for p in paths if str(p).endswith(".png")), None)
        if png is None:
            continue
        # Embedded as data URIs so the page is one file that opens offline, anywhere.
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        caption = FIGURE_CAPTIONS.get(name, name)
        # where the files are, said from the report's folder: plots/, or a `plot --out` folder elsewhere in full
        where = Path(os.path.relpath(png.parent.resolve(), run_dir.resolve()))
        where = where.as_posix() if not where.parts or where.parts[0] != ".." else str(png.parent.resolve())
        parts.append(f'<figure id="fig-{_e(name)}"><img src="data:image/png;base64,{data}" alt="{_e(name)}">'
                     f"<figcaption>{_e(caption)} <span class=\"muted\">({_e(png.name)} and .svg in "
                     f"{_e(where)}/)</span></figcaption></figure>")
    for name, reason in skipped.items():
        if name not in figures and reason:
            parts.append(f'<p class="note">{"t-SNE" if name == "tsne" else name.capitalize()} not drawn: {_e(reason)}.</p>')
    return "".join(parts)


def _training_time(info: dict, results: list[dict]) -> str:
    """The folds' summed training time; a member trained (or resumed) by a timnet version that did not
    record each member's time counted 0 s, so such a sum is only a lower bound, and said to be."""
    total = _duration(sum(r.get("seconds", 0.0) for r in results))
    members = (info["identity"].get("train_config") or {}).get("members", 1)
    unknown = members > 1 and any(not all(r.get("member_seconds") or [0]) for r in results)
    return f"at least {total} (some members' time was not recorded by the timnet that trained them)" if unknown else total


def _environment(info: dict, results: list[dict]) -> str:
    versions = info.get("versions", {})
    rows = [(k, v) for k, v in versions.items() if k != "threads"]
    rows += [("threads per fold", info["identity"].get("threads_per_fold")), ("torch threads (main process)", versions.get("threads")),
             ("training time (folds and members summed)", _training_time(info, results)),
             ("started", info.get("started")), ("command", shlex.join(map(str, info.get("command", []))))]
    return _kv_table(rows)


def render_report(run_dir: Path, figures: dict[str, list[Path]]) -> str:
    """The report page of a RUN_DIR as one HTML string (no scripts, no external resources)."""
    info = _run_info(run_dir)
    ident = info["identity"]
    results, lost = _fold_results(run_dir, ident["labels"])
    key, split = _scored(results)
    wars, uars = np.array([r[key + "war"] for r in results]), np.array([r[key + "uar"] for r in results])
    headline = (f"{'' if split == 'test' else 'validation '}WAR {_pct(wars.mean())} ± {_pct(wars.std())} %, "
                f"UAR {_pct(uars.mean())} ± {_pct(uars.std())} % over {len(results)} folds"
                + (" that converged" if lost else "")
                + ("" if split == "test" else " (a validation-only run: no test fold was predicted)")
                + (f"; {diverged_words(lost)}, left out" if lost else ""))
    title = f"TIM-Net {ident['corpus']}: {run_dir.resolve().name}"
    context = run_context(ident)
    body = [f"<h1>{_e(title)}</h1>", f'<p class="muted">{_e(context)}</p>', f'<p class="headline">{_e(headline)}</p>',
            f'<p class="muted">mean ± population std over folds; started {_e(info.get("started", "?"))}</p>',
            "<h2>Protocol</h2>", _protocol(info, results, lost, run_dir),
            "<h2>Folds</h2>", _fold_table(results, ident),
            *(["<h2>Classes (pooled over folds)</h2>", _class_table(results, ident["labels"])] if split == "test" else []),
            "<h2>Figures</h2>", _figures(figures, {"tsne": _tsne_unavailable(info), **getattr(figures, "skipped", {})}, run_dir),
            "<h2>Environment</h2>", _environment(info, results)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: str | Path, *, figures: dict[str, list[Path]] | None = None) -> Path:
    """Write RUN_DIR/report.html (atomically), drawing the figures first when `figures` is None."""
    run_dir = Path(run_dir)
    if figures is None:
        figures = plot_run(run_dir)
    page = render_report(run_dir, figures)
    path = run_dir / REPORT_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
