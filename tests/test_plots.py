"""Figures and the HTML report of a tiny synthetic RUN_DIR; the report also opened in headless Chromium."""
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: tests never need a display

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import browser
from test_train import LABELS, synthetic
from timnet import plots
from timnet.errors import TimnetError
from timnet.evaluate import evaluate, fold_models, summarize
from timnet.features import save_features
from timnet.report import plot_evaluation, plot_run, read_history, run_context, write_report
from timnet.rundir import read_identity
from timnet.run import Run
from timnet.train import TrainConfig

FIGURES = {"curves", "confusion", "confusion_folds", "recall", "tsne"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 3-fold run (3 epochs, validation) on synthetic features saved to disk."""
    tmp = tmp_path_factory.mktemp("plots")
    fs = synthetic()
    features_path = save_features(fs, tmp / "features.npz")
    run_dir = tmp / "run"
    run = Run(fs, run_dir, config=TrainConfig(epochs=3, batch_size=16, val_fraction=0.25, save_every=100),
              folds=3, seed=1, features_path=str(features_path))
    run.prepare()
    run.execute(progress=False, log=lambda m: None)
    return fs, run_dir


@pytest.fixture(scope="module")
def reported(trained):
    """plot_run's files and write_report's page for the trained run."""
    _, run_dir = trained
    figures = plot_run(run_dir)
    return figures, write_report(run_dir, figures=figures)


def check_image_files(paths):
    png, svg = sorted(paths, key=lambda p: p.suffix)
    assert png.suffix == ".png" and svg.suffix == ".svg"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1  # not a blank canvas
    assert "<svg" in svg.read_text()


def test_plot_run_writes_every_figure(trained, reported):
    _, run_dir = trained
    figures, _ = reported
    assert set(figures) == FIGURES
    for name, paths in figures.items():
        assert {p.name for p in paths} == {f"{name}.png", f"{name}.svg"}
        assert all(p.parent == run_dir / "plots" for p in paths)
        check_image_files(paths)


def test_plot_command_with_out_folder(trained, tmp_path, capsys):
    """`timnet plot RUN_DIR --out DIR`: the figures go to DIR, the report stays in RUN_DIR and links them."""
    import shutil

    from timnet import cli

    run_dir = shutil.copytree(trained[1], tmp_path / "run", ignore=shutil.ignore_patterns("plots", "report.html"))
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "figs"), "--seed", "3"]) == 0
    assert f"-> {tmp_path / 'figs'}; report -> {run_dir / 'report.html'}" in capsys.readouterr().out
    assert {p.stem for p in (tmp_path / "figs").iterdir()} == FIGURES and not (run_dir / "plots").exists()
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES) and f"tsne.png and .svg in {(tmp_path / 'figs').resolve()}/" in page  # outside RUN_DIR: in full
    # DIR's figures are timnet's own: drawn again over them; a file of the user's under a figure's
    # name would be replaced (or deleted, its figure skipped): refused before any figure is drawn
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "figs"), "--seed", "3"]) == 0
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tsne.svg").write_text("<svg>the user's own figure</svg>")
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "mine")]) == 1
    assert capsys.readouterr().err == (f"timnet: error: --out {tmp_path / 'mine'}: tsne.svg there carries no timnet mark (a file "
                                       "of yours, or a figure from a timnet before the mark: delete it then), and drawing would "
                                       "replace it; expected it moved away, or another folder for the figures\n")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["tsne.svg"]
    # a link, even to a timnet figure (another run's, say), is the user's: drawing would write through it
    (tmp_path / "mine" / "tsne.svg").unlink()
    (tmp_path / "mine" / "tsne.svg").symlink_to(tmp_path / "figs" / "tsne.svg")
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "mine")]) == 1
    assert "tsne.svg there carries no timnet mark" in capsys.readouterr().err
    # a t-SNE seed sklearn would refuse: one line before any figure, not a traceback after half of them
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "neg"), "--seed", "-1"]) == 1
    assert capsys.readouterr().err.strip() == "timnet: error: --seed -1 invalid; expected an integer from 0 to 4294967295"
    assert not (tmp_path / "neg").exists()
    # --features that are not the run's: one line, before any figure
    other = save_features(dataclasses.replace(trained[0], corpus="CASIA"), tmp_path / "other.npz")
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "other"), "--features", str(other)]) == 1
    assert capsys.readouterr().err.startswith(f"timnet: error: --features {other}: no t-SNE from it: ")
    assert not (tmp_path / "other").exists()
    assert cli.main(["plot", str(run_dir), "--features", ""]) == 1
    assert capsys.readouterr().err.startswith("timnet: error: --features '': empty path")
    # RUN_DIR/report.html cannot be written (here a folder in its place; or a read-only RUN_DIR):
    # refused before any figure is drawn, not after
    (run_dir / "report.html").unlink()
    (run_dir / "report.html").mkdir()
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "late")]) == 1
    assert "report.html is a folder; expected a file path" in capsys.readouterr().err
    assert not (tmp_path / "late").exists()
    # a RUN_DIR that does not exist is said to be missing, not to be something else
    assert cli.main(["plot", str(tmp_path / "nothere")]) == 1
    assert capsys.readouterr().err.strip() == (f"timnet: error: {tmp_path / 'nothere'}: no such folder; "
                                               "expected a RUN_DIR (from `timnet train`)")


def test_history_reads_validation_columns(trained):
    _, run_dir = trained
    h = read_history(run_dir / "fold_01" / "history.csv")
    assert set(h) == {"epoch", "loss", "acc", "val_loss", "val_war", "val_uar"}
    assert h["epoch"].tolist() == [1, 2, 3] and np.isfinite(h["val_uar"]).all()


def test_curves_average_over_the_folds_that_have_the_epoch():
    long = {"epoch": np.array([1, 2, 3, 4]), "loss": np.array([4.0, 3.0, 2.0, 1.0]), "acc": np.full(4, 0.5),
            "val_uar": np.array([np.nan, 0.2, np.nan, 0.6])}  # eval_every=2
    short = {"epoch": np.array([1, 2]), "loss": np.array([2.0, 1.0]), "acc": np.full(2, 0.7)}  # stopped early
    fig = plots.curves_figure([long, short])
    assert isinstance(fig, Figure)
    loss_ax, acc_ax = fig.axes[:2]
    train_loss = loss_ax.get_lines()[0]
    assert train_loss.get_xdata().tolist() == [1, 2, 3, 4]
    assert train_loss.get_ydata().tolist() == [3.0, 2.0, 2.0, 1.0]
    val_uar = [ln for ln in acc_ax.get_lines() if ln.get_label() == "validation UAR"][0]
    assert val_uar.get_xdata().tolist() == [2, 4] and val_uar.get_ydata().tolist() == [0.2, 0.6]
    # where the means start to rest on fewer trainings, the figure says so
    marks = [ln for ln in loss_ax.get_lines() if ln.get_label().startswith("from epoch")]
    assert [ln.get_label() for ln in marks] == ["from epoch 3: fewer trainings (stopped early), 1 of 2 at the last"]
    assert not [ln for ln in plots.curves_figure([long, long]).axes[0].get_lines() if ln.get_label().startswith("from")]
    # the ±1 std band stops where one training is left: a zero width there is no agreement of folds
    band = loss_ax.collections[0].get_paths()[0].vertices
    assert band[:, 0].min() == 1 and band[:, 0].max() == 2


def test_each_emotion_keeps_its_colour_across_corpora():
    from timnet.corpora import CORPORA

    styles = {name: {label: style for label, style in zip(CORPORA[name].labels, zip(*plots._class_styles(CORPORA[name].labels)))}
              for name in CORPORA}
    assert styles["EMODB"]["fear"] == styles["CASIA"]["fear"] == styles["RAVDESS"]["fear"]
    assert styles["CASIA"]["fear"] != styles["CASIA"]["sad"]  # the pair CASIA confuses most
    for corpus in styles.values():  # no two classes of one corpus alike
        assert len(set(corpus.values())) == len(corpus)
    colors, markers = plots._class_styles(("quiet", "loud"))  # other names: the palette in order
    assert colors == list(plots.OKABE_ITO[:2]) and markers == list(plots.MARKERS[:2])


def test_figure_functions_return_figures(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 9, (7, 7))
    cm[3] = 0  # a class absent from the test split must not divide by zero
    figs = {"confusion": plots.confusion_figure(cm, LABELS),
            "recall": plots.recall_figure(cm, LABELS, uar=0.5, war=0.6),
            "tsne": plots.tsne_figure(rng.standard_normal((10, 8)), np.arange(10) % 7, LABELS, seed=0)}
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        check_image_files(plots.save_figure(fig, tmp_path / f"{name}.v1"))  # a dot in the name is kept
    assert "UAR 50.00%" in figs["recall"].axes[0].get_title()
    ticks = [t.get_text() for t in figs["recall"].axes[0].get_xticklabels()]
    assert ticks[3] == f"{LABELS[3]}\nnot tested (n=0)" and ticks[0].endswith(f"(n={cm[0].sum()})")


def test_each_folds_confusion_matrix_with_its_own_figures(tmp_path):
    """Small multiples, one per fold, titled with the fold's WAR and UAR (a class absent from a
    fold's test split counts in neither); a matrix that does not fit the labels is refused."""
    eye = np.eye(7, dtype=int) * 2
    half = eye.copy()
    half[0] = [0, 2, 0, 0, 0, 0, 0]  # class 0 all wrong
    half[6] = 0  # class 6 absent
    fig = plots.fold_confusions_figure([eye, half, eye], LABELS, titles=["fold 1", "fold 2 (03)", "fold 3"])
    shown = [ax for ax in fig.axes if ax.axison and ax.images]
    assert [ax.get_title() for ax in shown] == ["fold 1\nWAR 100.0%  UAR 100.0%", "fold 2 (03)\nWAR 83.3%  UAR 83.3%",
                                                "fold 3\nWAR 100.0%  UAR 100.0%"]
    check_image_files(plots.save_figure(fig, tmp_path / "folds"))
    assert len(plots.fold_confusions_figure([eye] * 12, LABELS, titles=[str(i) for i in range(12)]).axes) == 15 + 1
    one = plots.fold_confusions_figure([eye], LABELS, titles=["fold 1"])  # a run with one fold finished
    assert "confusion matrix of the fold " in one._suptitle.get_text() and one.get_figwidth() >= 6.5
    assert plots.short_labels(["sad", "sadness", "happy_low", "happy_high", "angry"]) == \
        ["sad", "sadness", "happy_l", "happy_h", "angry"]  # one width for all, the least that tells them apart
    assert plots.short_labels(["a", "a"]) == ["a", "a"]  # no cut tells them apart: as they are
    with pytest.raises(TimnetError, match="fold 2: confusion matrix of shape \\(6, 6\\) does not fit 7 labels"):
        plots.fold_confusions_figure([eye, np.eye(6, dtype=int)], LABELS, titles=["fold 1", "fold 2"])


def test_tsne_is_reproducible():
    features = np.random.default_rng(3).standard_normal((84, 32))
    a = plots.tsne_embedding(features, seed=0)
    assert a.shape == (84, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, plots.tsne_embedding(features, seed=0))
    # No "another seed differs" check: with init="pca" sklearn uses the seed only in its
    # randomized PCA, which converges to the same components, so the embedding barely depends on it.
    assert plots.tsne_embedding(features[:4], seed=0).shape == (4, 2)  # perplexity shrinks for tiny inputs


def test_tsne_of_few_or_identical_samples():
    """Samples all alike (one speaker's duplicated utterances in a leave-one-speaker-out fold) made
    sklearn's t-SNE crash the process (its PCA start divides by their zero spread): they are one
    point. Fewer than four samples, where t-SNE's perplexity would be under 1 and put distinct
    points on one spot, are placed by their principal components: distances kept."""
    for n in (2, 3, 10):
        np.testing.assert_array_equal(plots.tsne_embedding(np.ones((n, 39))), np.zeros((n, 2)))
    three = np.random.default_rng(5).standard_normal((3, 39))
    emb = plots.tsne_embedding(three)
    gaps = lambda a: [np.linalg.norm(a[i] - a[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    np.testing.assert_allclose(gaps(emb), gaps(three), rtol=1e-9)  # three points lie in a plane: exact


def test_tsne_figure_draws_a_leave_one_out_fold():
    """A fold with one test utterance (leave-one-out on a tiny corpus) is one dot, not an error."""
    features, y = np.random.default_rng(4).standard_normal((5, 8)), np.array([0, 1, 0, 1, 1])
    fig = plots.tsne_figure(features, y, ["a", "b"], groups=np.array([1, 1, 1, 1, 2]))
    single = fig.axes[1]
    assert single.get_title() == "fold 2 (1)"
    assert [c.get_offsets().tolist() for c in single.collections] == [[[0.0, 0.0]]]


def folds_rows(page: str) -> list[str]:
    table = re.search(r'<table id="folds">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table, "no folds table"
    return re.findall(r"<tr>", table.group(1))


def test_report_is_one_offline_page(trained, reported):
    _, run_dir = trained
    _, report = reported
    assert report == run_dir / "report.html"
    page = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert len(folds_rows(page)) == 3
    summary = json.loads((run_dir / "results.json").read_text())
    assert f"{100 * summary['mean_uar']:.2f} ± {100 * summary['std_uar']:.2f}" in page
    for text in ("EMODB", "validation fraction</th><td>0.25", "scikit-learn", "training time (folds and members summed)",
                 "weights kept</th><td>the last epoch&#x27;s", "<th>model</th>", "epoch 3 of 3"):
        assert text in page
    assert "test speakers" not in page  # random folds hold every speaker: a column of the same names


def test_figures_and_report_say_what_run_they_show(tmp_path):
    """An ensemble with SWA on speaker folds: every figure's title names corpus, recipe and protocol;
    the curves are every member's training with the SWA window shaded; the recall bars have the
    folds' spread; the report says what each fold's model is, and which speakers it was tested on."""
    fs = synthetic()
    run_dir = tmp_path / "run"
    run = Run(fs, run_dir, config=TrainConfig(epochs=4, batch_size=16, swa_epochs=2, members=2, save_every=100),
              folds=2, seed=1, split="speaker", features_path=str(save_features(fs, tmp_path / "f.npz")))
    run.prepare()
    run.execute(progress=False, log=lambda m: None)
    figures = plot_run(run_dir)
    svg = {name: next(p for p in paths if p.suffix == ".svg").read_text() for name, paths in figures.items()}
    context = "EMODB · recipe paper, 2 members, SWA of the last 2 epochs · 2-fold speaker-independent CV, seed 1"
    for name, text in svg.items():
        assert context in html.unescape(text), name  # text kept as text in the SVG (svg.fonttype none)
    assert run_context({**read_identity(run_dir), "train_config": {"recipe": "strong", "members": 4, "swa_epochs": 100,
                                                                         "mixup_alpha": 0.2}}).startswith(
        "EMODB · recipe strong, 4 members, SWA of the last 100 epochs, mixup 0.2 · ")
    assert "over 2 folds × 2 members" in svg["curves"] and "weights averaged (SWA, last 2 epochs)" in svg["curves"]
    assert "±1 std over the folds that test each class (2 in all)" in svg["recall"] and "pooled UAR" in svg["recall"]
    assert "penultimate features of the 2 members, concatenated" in svg["tsne"]
    page = html.unescape(write_report(run_dir, figures=figures).read_text())
    assert "SWA of epochs 3–4, 2 members" in page and "networks per fold</th><td>2, their probabilities averaged" in page
    assert "<th>test speakers</th>" in page and "validation fraction" not in page


def test_a_fold_without_its_model_skips_the_tsne_it_would_leave_out(trained, tmp_path):
    """The confusion figures sum every fold's result; a t-SNE of the folds whose model.pt is left
    would pass for all of them, so it is skipped, the fold named."""
    _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots", "report.html"))
    (copy / "fold_02" / "model.pt").unlink()
    with pytest.warns(UserWarning, match=r"t-SNE skipped: fold 2 has a result but no model \(.*fold_02/model.pt missing\)"):
        figures = plot_run(copy)
    assert set(figures) == FIGURES - {"tsne"}


def test_missing_features_skip_tsne_and_text_is_escaped(trained, tmp_path):
    _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots", "report.html"))
    info = json.loads((copy / "run.json").read_text())
    info.update(features=str(tmp_path / "gone.npz"), command=["timnet", "train", "<script>alert(1)</script>"])
    (copy / "run.json").write_text(json.dumps(info))
    (copy / "plots").mkdir()
    (copy / "plots" / "tsne.png").write_bytes(b"an earlier plot's")
    with pytest.warns(UserWarning, match="t-SNE skipped: the features file .*gone.npz"):
        figures = plot_run(copy)
    assert set(figures) == FIGURES - {"tsne"}
    assert not list((copy / "plots").glob("tsne.*"))  # not left beside figures it does not match
    page = write_report(copy, figures=figures).read_text()
    assert "t-SNE not drawn" in page and "<script" not in page
    other = save_features(dataclasses.replace(trained[0], corpus="CASIA"), tmp_path / "other.npz")
    (copy / "run.json").write_text(json.dumps({**info, "features": str(other)}))
    with pytest.warns(UserWarning, match=r"t-SNE skipped: .*other.npz: holds CASIA features, but the run .*run is of EMODB"):
        figures = plot_run(copy)
    assert html.escape("<script>alert(1)</script>") in page
    # the page says why, also when the reason was found only on reading the features
    assert "t-SNE not drawn" in write_report(copy, figures=figures).read_text() and "tsne" in figures.skipped
    # the features moved: named, the t-SNE is drawn; a file that is not the run's is an error, not a skip
    moved = tmp_path / "moved.npz"
    shutil.copy(info_features := json.loads((run_dir / "run.json").read_text())["features"], moved)
    assert set(plot_run(copy, features=moved)) == FIGURES and (copy / "plots" / "tsne.png").is_file()
    with pytest.raises(TimnetError, match=r"--features .*other.npz: no t-SNE from it: .*holds CASIA features"):
        plot_run(copy, features=other)
    with pytest.raises(TimnetError, match=r"--features .*nope.npz: no t-SNE from it: .*nope.npz does not exist$"):
        plot_run(copy, features=tmp_path / "nope.npz")
    (tmp_path / "a_folder").mkdir()  # there, but no file: not said to be missing
    with pytest.raises(TimnetError, match=r"no t-SNE from it: .*a_folder is a folder; expected a feature file"):
        plot_run(copy, features=tmp_path / "a_folder")
    alike = save_features(dataclasses.replace(trained[0], x=trained[0].x + 1), tmp_path / "alike.npz")
    with pytest.raises(TimnetError, match=r"alike.npz: no t-SNE from it: .*alike.npz holds other features than the run"):
        plot_run(copy, features=alike)
    assert info_features != str(moved)


def test_unfinished_run_is_plotted_and_said(trained, tmp_path):
    """A run with a fold still to train: the figures of the finished folds, and a warning saying
    so, as `test` and `predict` give on the same folder."""
    _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots", "report.html"))
    shutil.rmtree(copy / "fold_03")
    with pytest.warns(UserWarning, match=r"only 2 of 3 folds are finished; the figures cover those"):
        figures = plot_run(copy)
    assert set(figures) == FIGURES
    # a fold killed between its model.pt and its result.json (written last) is not finished for
    # the t-SNE either: every figure shows the same folds
    shutil.copytree(run_dir / "fold_03", copy / "fold_03")
    (copy / "fold_03" / "result.json").unlink()
    with pytest.warns(UserWarning, match=r"only 2 of 3 folds are finished"):
        figures = plot_run(copy)
    svg = (copy / "plots" / "tsne.svg").read_text()
    assert "fold 1 (" in svg and "fold 2 (" in svg and "fold 3 (" not in svg


def test_plot_evaluation(trained, tmp_path):
    fs, run_dir = trained
    results, outputs = evaluate(fs, fold_models(run_dir, fs, folds=3, seed=1))
    summary = summarize(results, corpus=fs.corpus, labels=fs.labels, split="random", seed=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "confusion.png").write_bytes(b"the user's own figure")
    with pytest.raises(TimnetError, match="confusion.png there carries no timnet mark"):
        plot_evaluation(fs, summary, outputs, tmp_path / "out", seed=0)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["confusion.png"]
    (tmp_path / "out" / "confusion.png").unlink()
    plots.save_figure(Figure(), tmp_path / "out" / "curves")  # a run's curves, plotted here before
    (tmp_path / "out" / "curves.csv").write_text("the user's own file")
    figures = plot_evaluation(fs, summary, outputs, tmp_path / "out", seed=0)
    assert set(figures) == FIGURES - {"curves"}
    for paths in figures.values():
        check_image_files(paths)
    assert not (tmp_path / "out" / "curves.png").exists()  # not of these weights: not left beside their figures
    assert (tmp_path / "out" / "curves.csv").read_text() == "the user's own file"


def test_report_in_headless_chromium(reported, tmp_path):
    if not browser.available():
        if os.environ.get("CI"):
            pytest.fail(f"{browser.CHROMIUM} not found; CI must install it (apt-get install -y chromium)")
        pytest.skip(f"{browser.CHROMIUM} not installed (apt-get install -y chromium); CI runs this test")
    _, report = reported
    # The report has no scripts; a copy gets one that records what the browser saw into the DOM.
    check = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  document.body.setAttribute('data-check', JSON.stringify({
    images: images.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    rows: document.querySelectorAll('#folds tbody tr').length}));
});
</script>"""
    page = tmp_path / "report_check.html"
    page.write_text(report.read_text().replace("</body>", check + "</body>"))
    dom = browser.dump_dom(page)
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, f"the check script did not run; DOM starts: {dom[:500]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result == {"images": len(FIGURES), "loaded": len(FIGURES), "rows": 3}


def test_validation_only_run_reports_its_validation_scores(tmp_path):
    """A sweep trial or a recipe-selection run predicts no test fold: curves and a report of its
    validation scores, not an error; a damaged run.json is a one-line error."""
    from timnet.errors import TimnetError

    run_dir = tmp_path / "trial"
    run = Run(synthetic(), run_dir, config=TrainConfig(epochs=2, batch_size=16, val_fraction=0.25, save_every=100),
              folds=3, seed=1, evaluate_test=False)
    run.prepare()
    run.execute(progress=False, log=lambda m: None)
    with pytest.warns(UserWarning, match="validation-only run"):
        figures = plot_run(run_dir)
    assert set(figures) == {"curves"}
    page = write_report(run_dir, figures=figures).read_text()
    assert "validation WAR" in page and "no test fold was predicted" in page and 'id="classes"' not in page
    with pytest.raises(TimnetError, match="--features f.npz: a validation-only run has no t-SNE to draw from them"):
        plot_run(run_dir, features="f.npz")
    (run_dir / "run.json").write_text("{cut")
    with pytest.raises(TimnetError, match="run.json: not a readable timnet run file"):
        plot_run(run_dir)


def test_missing_histories_leave_the_curves_short_or_undrawn_and_say_so(trained, tmp_path):
    """A fold restored from the benchmarks' ledger holds its result.json alone: the figures drawn from
    the results are drawn, the curves average the histories there are (the title counts them), or
    are not drawn when there are none, and the warning and the report say which."""
    _, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "fold_02" / "history.csv").unlink()
    with pytest.warns(UserWarning, match=re.escape(f"{run}: 1 of 3 training histories missing ({run}/fold_02/history.csv): "
                                                   "the curves average the other 2")):
        figures = plot_run(run)
    assert set(figures) == FIGURES
    assert "over 2 of the 3 trainings of 3 folds" in (run / "plots" / "curves.svg").read_text()
    for k in (1, 3):
        (run / f"fold_0{k}" / "history.csv").unlink()
    with pytest.warns(UserWarning, match=re.escape(f"{run}: curves skipped: 3 of 3 training histories missing "
                                                   f"({run}/fold_01/history.csv, ...)")):
        figures = plot_run(run)
    assert set(figures) == FIGURES - {"curves"} and not list((run / "plots").glob("curves.*"))  # not the earlier one's
    page = write_report(run, figures=figures).read_text()
    assert "Curves not drawn: 3 of 3 training histories missing" in page and "confusion" in page
    for model in run.glob("fold_*/model.pt"):  # the ledger's folds: results alone, still drawn
        model.unlink()
    with pytest.warns(UserWarning) as said:
        assert set(plot_run(run)) == {"confusion", "confusion_folds", "recall"}
    assert [str(w.message).split(": ", 1)[1] for w in said][-1] == "no fold holds its model (fold_*/model.pt), only its result"


def test_a_run_file_edited_into_other_types_is_one_error(trained, tmp_path):
    """Values of run.json that readers rely on, edited by hand into another type: said as the run
    file's damage, not a TypeError deep in the figures or the evaluation."""
    _, run_dir = trained
    for i, (where, key, value, said) in enumerate((
            ("identity", "labels", None, "identity.labels is null, not a list of class names"),
            ("identity", "labels", ["a", 3], 'identity.labels is ["a", 3], not a list of class names'),
            ("identity", "folds", "two", 'identity.folds is "two", not a whole number'),
            ("identity", "seed", True, "identity.seed is true, not a whole number"),
            ("identity", "train_config", None, "identity.train_config is null, not a JSON object"),
            (None, "features", 5, "a JSON object with an identity"))):
        copy = shutil.copytree(run_dir, tmp_path / f"run{i}", ignore=shutil.ignore_patterns("plots", "report.html"))
        info = json.loads((copy / "run.json").read_text())
        (info[where] if where else info)[key] = value
        (copy / "run.json").write_text(json.dumps(info))
        with pytest.raises(TimnetError, match=rf"run{i}/run.json: not a readable timnet run file \({re.escape(said)}\)"):
            plot_run(copy)
        assert not (copy / "plots").exists()


def test_damaged_history_or_result_is_one_error(trained, tmp_path):
    from timnet.errors import TimnetError

    _, run_dir = trained
    def edited(**changes):
        return lambda t: json.dumps({k: v for k, v in {**json.loads(t), **changes}.items() if v is not None})

    for i, (name, damage, message) in enumerate((
        ("history.csv", lambda t: t.replace(t.splitlines()[2].split(",")[1], "abc", 1), "not a readable training history"),
        ("history.csv", lambda t: "foo,bar\n1,2\n", r"not a training history \(no epoch and loss columns\)"),
        ("result.json", lambda t: json.dumps([json.loads(t)]), "not a timnet fold result"),
        ("result.json", edited(confusion=None), "not a timnet fold result"),
        ("result.json", edited(n_test=None), "not a timnet fold result"),
        ("result.json", edited(confusion=[[1, 2], [3, 4, 5]]), "not a timnet fold result"),
        ("result.json", edited(n_test=10 ** 6), "not a timnet fold result"),
        ("result.json", edited(confusion=[[1, 2], [3, 4]], n_test=10), r"a confusion matrix of 2 classes in a run of 7 "),
        ("result.json", edited(fold=1), r"the result of fold 1, in fold_02; expected each fold's result in its own folder"),
        ("result.json", edited(fold=5), r"the result of fold 5, in fold_02"),
    )):
        run = tmp_path / f"run{i}"
        shutil.copytree(run_dir, run)
        path = run / "fold_02" / name
        path.write_text(damage(path.read_text())) if damage else path.unlink()
        with pytest.raises(TimnetError, match=re.escape(str(path)) + ": " + message):
            plot_run(run, out_dir=tmp_path / "figs")
        assert not (tmp_path / "figs").exists()  # refused before any figure is drawn
    # a model cut short fails the plot before any figure is written: the folder's figures stay as they were
    run = tmp_path / "cut"
    shutil.copytree(run_dir, run)
    figures = plot_run(run)
    before = {p.name: p.read_bytes() for p in (run / "plots").iterdir()}
    (run / "fold_01" / "history.csv").write_text((run / "fold_01" / "history.csv").read_text().rsplit("\n", 2)[0] + "\n")
    model = run / "fold_03" / "model.pt"
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(TimnetError, match=re.escape(str(model)) + ": not a readable timnet checkpoint"):
        plot_run(run)
    assert {p.name: p.read_bytes() for p in (run / "plots").iterdir()} == before and set(figures) <= FIGURES
    # a model with a NaN weight (a damaged file) predicts one class for everything: refused, as predict refuses it
    nan = tmp_path / "nan"
    shutil.copytree(run_dir, nan)
    ckpt = torch.load(nan / "fold_02" / "model.pt", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][name][0] = float("nan")
    torch.save(ckpt, nan / "fold_02" / "model.pt")
    expected = re.escape(str(nan / "fold_02" / "model.pt")) + r": non-finite \(NaN or inf\) weights; expected a trained model"
    with pytest.raises(TimnetError, match=expected):
        plot_run(nan, out_dir=tmp_path / "nan_figs")
    r = subprocess.run([sys.executable, "-m", "timnet", "test", str(run_dir.parent / "features.npz"), "--weights", str(nan)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and re.search(expected, r.stderr) and r.stderr.count("\n") == 1, r.stderr


def test_fold_table_says_each_members_epoch_when_they_differ():
    """Members stop early on their own: the fold's epoch is its first member's, so the table gives
    each member's when they differ, and one line when they agree."""
    from timnet.report import _fold_model

    tc = {"members": 2, "swa_epochs": 0, "select": "best-val"}
    differ = {"epoch": 6, "epochs_run": 6, "stopped_early": True, "member_epochs": [
        {"epoch": 6, "epochs_run": 6, "stopped_early": True}, {"epoch": 9, "epochs_run": 12, "stopped_early": False}]}
    assert _fold_model(differ, tc) == "members: epoch 6 of 6 (stopped early); epoch 9 of 12"
    same = {**differ, "member_epochs": differ["member_epochs"][:1] * 2}
    assert _fold_model(same, tc) == "epoch 6 of 6 (stopped early), 2 members"
    assert _fold_model({"epoch": 3, "epochs_run": 3, "stopped_early": False}, {}) == "epoch 3 of 3"  # older runs
    # older results marked patience running out at the budget's last epoch as an early stop: it was not
    ran_out = {"epoch": 10, "epochs_run": 12, "stopped_early": True}
    assert _fold_model(ran_out, {**tc, "members": 1, "epochs": 12}) == "epoch 10 of 12"
    assert _fold_model(ran_out, {**tc, "members": 1, "epochs": 20}) == "epoch 10 of 12 (stopped early)"


def test_training_time_of_members_trained_before_their_time_was_kept():
    """Folds of members trained by a timnet that did not yet sum their time give a lower bound, said to be one."""
    from timnet.report import _duration, _training_time

    two = {"identity": {"train_config": {"members": 2}}}
    assert _training_time(two, [{"seconds": 100.0, "member_seconds": [50.0, 49.0]}]) == _duration(100.0)
    for old in ({"seconds": 2.0}, {"seconds": 60.0, "member_seconds": [0.0, 59.0]}):
        assert _training_time(two, [old]) == f"at least {_duration(old['seconds'])} (some members' time was not recorded " \
                                             "by the timnet that trained them)"
    assert _training_time({"identity": {"train_config": {"members": 1}}}, [{"seconds": 2.0}]) == _duration(2.0)


def test_names_that_were_not_utf8_are_drawn_and_written(tmp_path):
    """A speaker and a class from an old Latin-1 zip ("Jos\\xe9", "col\\xe8re", kept by Python as
    surrogates) are drawn and put in the page as \\xe9, not a matplotlib traceback after training."""
    odd = "Jos" + b"\xe9".decode("utf-8", "surrogateescape")
    fs = synthetic()
    fs = dataclasses.replace(fs, corpus="FOLDERS", labels=(*LABELS[:-1], "col" + b"\xe8".decode("utf-8", "surrogateescape") + "re"),
                             speakers=np.where(fs.speakers == "00", odd, fs.speakers))
    run_dir = tmp_path / "run"
    run = Run(fs, run_dir, config=TrainConfig(epochs=1, batch_size=16, save_every=100), folds=3, split="speaker", seed=1,
              features_path=str(save_features(fs, tmp_path / "f.npz")))
    run.prepare()
    run.execute(progress=False, log=lambda m: None)
    figures = plot_run(run_dir)
    page = write_report(run_dir, figures=figures).read_text(encoding="utf-8")
    assert set(figures) == FIGURES and "Jos\\xe9" in page and "col\\xe8re" in page
    assert "Jos\\xe9" in (run_dir / "plots" / "confusion_folds.svg").read_text()
