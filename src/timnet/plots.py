"""Figures of a run: training curves, confusion matrices, per-class recall, t-SNE of fused features.

Every `*_figure` function takes arrays and returns a matplotlib Figure; nothing here reads a
RUN_DIR or writes a file except `save_figure`. Figures are built with `matplotlib.figure.Figure`
rather than pyplot, so no GUI backend is touched and no global figure list grows in long sessions.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib.lines
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import metrics
from .errors import TimnetError
from .files import atomic_write

PNG_DPI = 150
# Train and validation series of the curves figure: (history column, legend name, panel).
CURVES = (
    # the loss training minimised (label smoothing, dropout, any augmentation), not comparable in
    # level with the validation's plain cross-entropy of the eval-mode model
    ("loss", "train loss (as minimised)", 0),
    ("val_loss", "validation loss (cross-entropy)", 0),
    # likewise of the batches as trained (dropout; under mixup, against each mixed pair's first label)
    ("acc", "train accuracy (as trained)", 1),
    ("val_war", "validation WAR", 1),
    ("val_uar", "validation UAR", 1),
)


# Okabe & Ito's palette, told apart with any colour vision (tab10's red/green/brown/orange are
# not), with a marker per class as a second cue; beyond eight classes tab20 takes over.
# The yellow is darkened (#F0E442 is 1.3:1 against white: its points would be faint).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#B8A200", "#0072B2", "#D55E00", "#CC79A7", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BAR_COLOR = "#0072B2"
# The six corpora's nine emotions keep one colour and marker in every figure of every corpus (fear
# is not yellow in EMODB's t-SNE and blue in CASIA's); other class names take the palette in order.
EMOTION_STYLES = {
    "angry": ("#D55E00", "o"), "happy": ("#E69F00", "s"), "sad": ("#0072B2", "^"), "neutral": ("#7F7F7F", "D"),
    "fear": ("#CC79A7", "v"), "disgust": ("#009E73", "P"), "surprise": ("#56B4E9", "X"), "boredom": ("#000000", "*"),
    "calm": ("#B8A200", "h"),
}


def _class_styles(labels: Sequence[str]) -> tuple[list, list[str]]:
    """(colour, marker) of each class: by emotion name when every name is one of the corpora's."""
    if all(name.casefold() in EMOTION_STYLES for name in labels):
        return [EMOTION_STYLES[n.casefold()][0] for n in labels], [EMOTION_STYLES[n.casefold()][1] for n in labels]
    n = len(labels)
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n]), list(MARKERS[:n])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)], ["o"] * n


def _titled(fig: Figure, title: str, context: str | None) -> None:
    """The figure's own title, under a line saying what run it shows (corpus, model, protocol)."""
    fig.suptitle(f"{context}\n{title}" if context else title)


def _fold_matrix(histories: Sequence[dict[str, np.ndarray]], column: str, epochs: np.ndarray) -> np.ndarray:
    """(folds, epochs) values of one column, NaN where a fold has no value for that epoch."""
    out = np.full((len(histories), len(epochs)), np.nan)
    for i, h in enumerate(histories):
        if column not in h:
            continue
        pos = np.searchsorted(epochs, np.asarray(h["epoch"], dtype=float))
        out[i, pos] = np.asarray(h[column], dtype=float)
    return out


def curves_figure(histories: Sequence[dict[str, np.ndarray]], *, what: str | None = None, swa_epochs: int = 0,
                  context: str | None = None) -> Figure:
    """Loss and accuracy per epoch: the mean over trainings (folds, or folds × members) with a ±1 std
    band, train and validation. `what` names the trainings in the title (default "N folds");
    `swa_epochs` shades the last epochs whose weights are averaged into the model."""
    if not histories:
        raise TimnetError("no training history to plot; expected at least one fold's history.csv")
    epochs = np.unique(np.concatenate([np.asarray(h["epoch"], dtype=float) for h in histories]))
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    axes = fig.subplots(1, 2)
    running = None  # trainings with a train loss at each epoch: fewer once some stopped early
    for column, name, panel in CURVES:
        values = _fold_matrix(histories, column, epochs)
        # Folds stopped early, and epochs without validation (eval_every > 1), are NaN: each
        # epoch averages only the folds that have a value there.
        count = np.sum(np.isfinite(values), axis=0)
        if column == "loss":
            running = count
        keep = count > 0
        if not keep.any():
            continue
        v = values[:, keep]
        mean = np.nansum(v, axis=0) / count[keep]
        std = np.sqrt(np.nansum((v - mean) ** 2, axis=0) / count[keep])
        x = epochs[keep]
        style = "--" if column.startswith("val_") else "-"
        (line,) = axes[panel].plot(x, mean, style, label=name, marker="." if keep.sum() < 30 else None)
        # no band where one training is left (a fold that ran on after the others stopped): a zero
        # width there would read as folds agreeing
        axes[panel].fill_between(x, mean - std, mean + std, where=count[keep] >= 2, color=line.get_color(), alpha=0.2,
                                 linewidth=0)
    if running is not None and (running < len(histories)).any():  # trainings stopped early: the means after this rest on fewer
        first = epochs[np.argmax(running < len(histories))]
        for ax in axes:
            ax.axvline(first - 0.5, color="0.45", linestyle=":", linewidth=1,
                       label=f"from epoch {first:.0f}: fewer trainings (stopped early), {running[-1]} of "
                             f"{len(histories)} at the last")
    if swa_epochs:
        last = epochs.max()
        for ax in axes:
            ax.axvspan(last - swa_epochs + 0.5, last + 0.5, color="0.85", zorder=0,
                       label=f"weights averaged (SWA, last {swa_epochs} epochs)")
    validated = any(column.startswith("val_") and column in h for h in histories for column, _, _ in CURVES)
    for ax, ylabel in zip(axes, ("loss", "accuracy / recall" if validated else "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 ticks on short runs
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_lines():  # below the axes, where it hides no curve
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))
    axes[1].set_ylim(0, 1.02)
    what = what or f"{len(histories)} fold{'s' * (len(histories) != 1)}"
    _titled(fig, f"training curves: mean ± 1 std (population) over {what}", context)
    return fig


def _row_rates(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each true class's count as a column, the matrix as fractions of it); a class absent from
    the test split is a row of zeros, not a division by zero."""
    support = cm.sum(axis=1, keepdims=True)
    return support, np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)


def confusion_figure(cm: np.ndarray, labels: Sequence[str], *, context: str | None = None) -> Figure:
    """Confusion matrix (rows true): row-normalised colours, counts and row % in the cells."""
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise TimnetError(f"confusion matrix of shape {cm.shape} does not fit {len(labels)} labels")
    support, rate = _row_rates(cm)
    n = len(labels)
    size = max(4.5, 0.75 * n + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{rate[i, j]:.0%}", ha="center", va="center", fontsize="small",
                    color="white" if rate[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{name} ({int(s)})" for name, s in zip(labels, support[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    ax.set_title(f"confusion matrix, {int(cm.sum())} test utterances")
    if context:
        fig.suptitle(context, fontsize="medium", wrap=True)
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.8)
    return fig


def short_labels(labels: Sequence[str], width: int = 3) -> list[str]:
    """The labels cut to `width` characters, longer where two would read the same (sad / sadness)."""
    for w in range(width, max(map(len, labels), default=0) + 1):
        short = [label[:w] for label in labels]
        if len(set(short)) == len(short):
            return short
    return list(labels)


def fold_confusions_figure(cms: Sequence[np.ndarray], labels: Sequence[str], *, titles: Sequence[str],
                           context: str | None = None) -> Figure:
    """Each fold's own confusion matrix (rows true), small multiples on one colour scale: where the
    summed matrix hides a fold that failed on a class (a speaker, in speaker-independent folds)."""
    if len(cms) != len(titles) or not len(cms):
        raise TimnetError(f"{len(cms)} confusion matrices for {len(titles)} fold titles")
    n, k = len(labels), len(cms)
    cols = min(k, 5)
    rows = -(-k // cols)
    cell = max(2.2, 0.32 * n + 0.8)
    # wide enough for the title lines whatever the number of folds (one fold of a run just begun)
    # each row's two title lines need their own height, or they sit on the row above's tick labels
    fig = Figure(figsize=(max(cell * cols + 1.2, 6.5), (cell + 0.5) * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    ticks = short_labels(labels)
    for ax, cm, title in zip(axes, cms, titles):
        cm = np.asarray(cm)
        if cm.shape != (n, n):
            raise TimnetError(f"{title}: confusion matrix of shape {cm.shape} does not fit {n} labels")
        _, rate = _row_rates(cm)
        image = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        if n <= 8:  # counts stay legible up to eight classes at this size
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize="x-small",
                                color="white" if rate[i, j] > 0.6 else "black")
        ax.set_xticks(range(n), ticks, rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), ticks, fontsize="x-small")
        ax.set_title(f"{title}\nWAR {metrics.war(cm):.1%}  UAR {metrics.uar(cm) if cm.sum() else 0:.1%}", fontsize="small")
    for ax in axes[k:]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes[:k].tolist(), label="fraction of the true class", shrink=0.6)
    what = "the fold" if k == 1 else f"each of the {k} folds"
    _titled(fig, f"confusion matrix of {what} (rows true, columns predicted)", context)
    return fig


def recall_figure(cm: np.ndarray, labels: Sequence[str], *, uar: float, war: float,
                  fold_cms: Sequence[np.ndarray] | None = None, context: str | None = None) -> Figure:
    """Per-class recall bars of a (pooled) confusion matrix; `uar` and `war` (typically the means over
    folds) go in the title, and `fold_cms`, the folds' own matrices, give each bar a ±1 std whisker."""
    pc = metrics.per_class(np.asarray(cm))
    n = len(labels)
    spread = None
    if fold_cms is not None and len(fold_cms) > 1:
        per_fold = np.array([metrics.per_class(np.asarray(c))["recall"] for c in fold_cms], dtype=float)
        present = np.array([np.asarray(c).sum(axis=1) > 0 for c in fold_cms])
        per_fold[~present] = np.nan  # a class absent from a fold's test split has no recall there
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class in no fold at all: NaN, no whisker
            spread = np.nanstd(per_fold, axis=0)
        # whiskers stay within [0, 1], where a recall lives
        spread = np.nan_to_num(np.stack([np.minimum(spread, pc["recall"]), np.minimum(spread, 1 - pc["recall"])]))
    fig = Figure(figsize=(max(7.0, 0.8 * n + 2), 4.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(n), pc["recall"], color=BAR_COLOR, yerr=spread, capsize=3 if spread is not None else 0,
                  error_kw={"elinewidth": 1, "ecolor": "0.25"})
    # The dashed line is the mean of these bars, the pooled UAR; the title's UAR is the mean of
    # the folds' UARs, which differs a little: both are named.
    mean_recall = float(np.mean(pc["recall"][pc["support"] > 0]))
    ax.axhline(mean_recall, color="0.3", linestyle="--", linewidth=1, label=f"pooled UAR {mean_recall:.2%} (mean of the bars)")
    # the values under the bars, where no whisker or line crosses them
    ax.set_xticks(range(n), [f"{name}\n{r:.0%} (n={s})" if s else f"{name}\nnot tested (n=0)"
                             for name, r, s in zip(labels, pc["recall"], pc["support"])], fontsize="small")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    handles, names = ax.get_legend_handles_labels()
    if spread is not None:
        handles.append(matplotlib.lines.Line2D([], [], color="0.25", marker="|", linestyle="", markersize=10))
        names.append(f"±1 std over the folds that test each class ({len(fold_cms)} in all)")
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize="small")  # below: no bar hidden
    ax.set_title(f"per-class recall, pooled over the test folds\nmean over folds: UAR {uar:.2%}, WAR {war:.2%}",
                 fontsize="medium")
    if context:
        fig.suptitle(context, fontsize="medium")
    return fig


TSNE_MIN_SAMPLES = 4  # below, a perplexity under N (sklearn's demand) would be under 1: no neighbourhoods


def tsne_embedding(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE embedding (PCA init), the same for the same features and seed.

    With PCA initialisation sklearn uses `seed` only in its randomized PCA, so in practice the
    embedding hardly depends on the seed: the gradient descent itself is deterministic. Fewer than
    TSNE_MIN_SAMPLES samples are placed by their two principal components instead (t-SNE put two
    of three distinct points on one spot), and samples that are all alike on one point: sklearn's
    PCA start divides by their spread, zero, and its optimiser then crashed the process.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2 or not np.isfinite(features).all():
        raise TimnetError(f"t-SNE needs finite (N >= 2, D) features; got shape {features.shape}"
                          + ("" if np.isfinite(features).all() else " with NaN/inf values"))
    centred = features - features.mean(axis=0)
    if len(features) < TSNE_MIN_SAMPLES or not np.abs(centred).max() > 1e-12 * max(np.abs(features).max(), 1.0):
        u, sv, _ = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((len(features), 2))
        k = min(2, len(sv))
        out[:, :k] = u[:, :k] * sv[:k]  # all alike: every singular value is ~0, every point at the origin
        return out
    # sklearn demands perplexity < N; a third of N keeps tiny test sets (and the tests) working.
    perplexity = min(30.0, (len(features) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
    # One thread: a fold's few hundred points take a fraction of a second, while OpenMP threads
    # spinning for cores that training runs hold made it a hundred times slower on a busy machine.
    with threadpool_limits(1):
        return tsne.fit_transform(features)


def tsne_figure(features: np.ndarray, y: np.ndarray, labels: Sequence[str], *, seed: int = 0,
                title: str | None = None, groups: np.ndarray | None = None, context: str | None = None) -> Figure:
    """2-D t-SNE of features, one colour per true class; one panel per group when `groups` is given.

    Features from different models live in different spaces (each fold's model learns its own),
    so a cross-validated run passes its test folds as `groups`: each panel embeds one fold's test
    samples, as seen by that fold's model, and every test sample appears once.
    """
    y = np.asarray(y)
    if len(y) != len(features):
        raise TimnetError(f"t-SNE got {len(features)} feature rows but {len(y)} labels")
    groups = np.zeros(len(y), dtype=int) if groups is None else np.asarray(groups)
    names = list(dict.fromkeys(sorted(groups.tolist())))
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    # panels small enough that the page's scaled-down image keeps default-size text legible
    fig = Figure(figsize=(8, 6) if len(names) == 1 else (2.6 * cols + 2.0, 2.6 * rows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    colors, markers = _class_styles(labels)
    for ax, g in zip(axes, names):
        mask = groups == g
        # one sample (a leave-one-out fold) has no layout to find: a single dot, coloured by its class
        emb = tsne_embedding(np.asarray(features)[mask], seed=seed) if mask.sum() >= 2 else np.zeros((mask.sum(), 2))
        for k, (name, color) in enumerate(zip(labels, colors)):
            pts = emb[y[mask] == k]
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], s=20 if len(names) == 1 else 12, color=color, marker=markers[k], alpha=0.8,
                           linewidths=0, label=f"{name} ({int((y == k).sum())})")
        ax.set_xticks([])
        ax.set_yticks([])  # t-SNE axes carry no units
        if len(names) > 1:
            ax.set_title(f"fold {g} ({int(mask.sum())})")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles = [matplotlib.lines.Line2D([], [], marker=markers[k], linestyle="", color=c, label=f"{n} ({int((y == k).sum())})")
               for k, (n, c) in enumerate(zip(labels, colors))]
    fig.legend(handles=handles, loc="outside right center", title="true class (n)")  # outside: no point hidden
    _titled(fig, title or f"t-SNE of {len(y)} samples (seed {seed})", context)
    return fig


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` as path.png and path.svg (atomically) and close it; returns both paths."""
    import matplotlib

    path = Path(path)
    out = []
    # A fixed hash salt and no date make the SVG byte-identical across runs of the same figure.
    # Text as text in the SVG (not glyph paths): editable and searchable in a paper's figure.
    with matplotlib.rc_context({"svg.hashsalt": "timnet", "svg.fonttype": "none"}):
        for fmt, meta in (("png", {"Source": "timnet"}), ("svg", {"Date": None, "Source": "timnet"})):  # rundir.FIGURE_MARKS
            target = path.parent / f"{path.name}.{fmt}"  # not with_suffix: names may contain dots
            with atomic_write(target) as tmp:
                # tight: rotated tick labels and long titles (a t-SNE of few folds) stay inside the image
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=meta, bbox_inches="tight")
            out.append(target)
    if "matplotlib.pyplot" in sys.modules:  # only pyplot keeps a registry of figures to close
        sys.modules["matplotlib.pyplot"].close(fig)
    return out
