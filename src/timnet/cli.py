"""The `timnet` command: argument parsing, printing, and the checks a command line needs before any
work starts (workers and threads from the cores; output paths in timnet.outputs); the work itself
is in the library."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

from . import dispatch
from .corpora import CORPORA  # the registry imports neither numpy nor torch: cheap for --help
from .errors import TimnetError
from .files import check_output, folder_lock, write_json
from .outputs import JSON_STDOUT, check_outputs, refuse_output_among
from .processes import sigterm_handler
from .rundir import RUN_FILE, weightless_words

CORPUS_NAMES = tuple(name.lower() for name in CORPORA)
EXIT_SIGPIPE = 128 + 13  # a shell's status for a command ended by SIGPIPE (13 on every POSIX system; Windows has none)
# The mirrors below (tested equal) keep --help free of numpy and torch imports, which are slow and,
# for numpy, must not happen before dispatch.pin().
SPLITS = ("random", "speaker")  # mirrors timnet.folds.SPLITS
ORDERS = ("spec", "authors")  # mirrors timnet.features.ORDERS
SELECTIONS = ("last", "best-val")  # mirrors timnet.train.SELECTIONS
PATHS = ("auto", "fast", "reference")  # mirrors timnet.train.PATHS
ADAM_EPS_RULES = ("torch", "keras")  # mirrors timnet.train.ADAM_EPS_RULES
RECIPE_NAMES = ("paper", "strong")  # mirrors timnet.recipe.RECIPES
SCHEDULES = ("constant", "cosine")  # mirrors timnet.recipe.SCHEDULES
# TrainConfig fields a recipe presets and the command line can override: (type, help)
RECIPE_OPTIONS = {
    "epochs": (int, "epochs per fold (default 500)"),
    "lr": (float, "Adam learning rate (default 1e-3)"),
    "label_smoothing": (float, "label smoothing on training labels (default 0.1)"),
    "lr_schedule": (str, "constant (default) or cosine"),
    "warmup_epochs": (int, "linear learning-rate warm-up (default 0)"),
    "ema_decay": (float, "keep the moving average of the weights with this decay per step (default 0: off)"),
    "swa_epochs": (int, "the fold's model is the mean of the weights after each of the last N epochs, "
                        "BN statistics measured afresh (default 0: off; --recipe strong: the last fifth of --epochs, 100 of 500)"),
    "time_shift": (int, "random circular shift of up to N frames (default 0)"),
    "time_masks": (int, "time masks per utterance (default 0)"),
    "time_mask_width": (int, "frames per time mask, at most (default 0)"),
    "freq_masks": (int, "MFCC-coefficient masks per utterance (default 0)"),
    "freq_mask_width": (int, "coefficients per mask, at most (default 0)"),
    "tempo": (float, "tempo of each utterance scaled by a random factor in [1-R, 1+R] (default 0: off)"),
    "vtlp": (float, "vocal-tract length perturbation: spectral envelope warped by a factor in [1-A, 1+A] (default 0: off)"),
    "gain": (float, "each utterance as if recorded up to DB decibels louder or quieter (default 0: off)"),
    "mixup_alpha": (float, "mixup with Beta(alpha, alpha) (default 0: off; 0.2 with --recipe strong)"),
    "members": (int, "models per fold from other initialisations, their probabilities averaged (default 1; "
                     "4 with --recipe strong); the first is the very model --members 1 trains (with --plain-members, "
                     "the one it trains without augmentation)"),
    "plain_members": (int, "the first N members train without augmentation (--time-shift, masks, --tempo, --vtlp, "
                           "--gain, --mixup-alpha), the others with it: a mixed ensemble (default 0; fewer than --members)"),
}
# TrainConfig fields no recipe presets, also None unless given (so that `sweep` can tell what was given)
RUN_OPTIONS = ("batch_size", "eval_every", "select", "patience", "save_every", "adam_eps_rule")


def _one_line(message: str) -> str:
    """A message as one line, whatever the file names in it hold (a name may contain a newline)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _warn(message: str) -> None:
    print(f"timnet: warning: {_one_line(message)}", file=sys.stderr)


def cmd_corpora(args) -> int:
    if args.all and not args.check:
        raise TimnetError("--all names the files a check found: give it with --check CORPUS DIR")
    if args.check:
        from .check import check_tree, format_check

        report = check_tree(args.check[0], args.check[1])
        print(format_check(report, limit=None if args.all else 20))
        return _check_status(report)

    print(f"{'corpus':<8} {'signal':>7} {'seed':>4} {'levels':>6} {'files':>5} {'speakers':>8}  labels / layout")
    for c in CORPORA.values():
        print(f"{c.name:<8} {c.signal_length:>7} {c.seed:>4} {c.dilations:>6} {c.n_files or '?':>5} {c.n_speakers:>8}  "
              f"{' '.join(c.labels)}")
        print(f"{'':<45}  {c.layout}")
    return 0


def cmd_organize(args) -> int:
    from .corpora import get_corpus, skip_summary
    from .organize import SPEAKER_PATTERN, organize

    r = organize(args.corpus, args.src, args.out, mode="copy" if args.copy else "link")
    print(f"{args.out}: {r.written} written, {r.unchanged} already in place"
          + (f", {len(r.removed)} links to files no longer in {args.src} removed" if r.removed else ""))
    if r.stale:
        _warn(f"{args.out}: {len(r.stale)} files of no utterance {args.src} now lists kept (e.g. {r.stale[0]}); "
              "delete them if they are not to be part of the corpus")
    print("per class:   " + ", ".join(f"{c} {n}" for c, n in r.per_class.items()))
    print("per speaker: " + ", ".join(f"{s} {n}" for s, n in r.per_speaker.items()))
    if r.skipped:
        from .corpora import Listing

        _warn(skip_summary(Listing(items=(), skipped=r.skipped, corpus=args.corpus.upper())))
    corpus = get_corpus(args.corpus)
    q = shlex.quote
    print(f"next: timnet extract folders {q(args.out)} --signal-length {corpus.signal_length} "
          f"--speaker-pattern {q(SPEAKER_PATTERN)} -o {q(corpus.name.lower() + '_folders.npz')}")
    # a folders corpus has its own seed, dilations and file order: the paper's protocol reads the original
    print(f"(for the paper's seed, levels and folds: timnet extract {corpus.name.lower()} {q(args.src)} "
          f"-o {q(corpus.name.lower() + '.npz')})")
    return 0


def cmd_download(args) -> int:
    from .check import format_check
    from .download import download

    n, report = download(args.corpus, args.dir, url=args.url, progress=not args.quiet)
    print(f"{args.dir}: {n} files unpacked\n")
    print(format_check(report))  # as `timnet corpora --check` prints it
    return _check_status(report)


def _check_status(report) -> int:
    """A corpus check's exit status; its problems also said on stderr, which a script reads."""
    if report.ok:
        return 0
    sys.stdout.flush()  # the report first, where both go to one terminal
    print(f"timnet: error: {report.root}: {report.problems()} (the {report.corpus} check's report on stdout names them)",
          file=sys.stderr)
    return 1


def cmd_extract(args) -> int:
    from .features import check_features_path, extract, missing_classes, replaced_corpus, save_features
    from .folds import unnamed

    check_features_path(args.output)  # before the extraction, --force or not
    before = replaced_corpus(args.output)
    if args.workers is not None and args.workers < 1:
        raise TimnetError(f"--workers {args.workers} invalid; expected a positive number")
    fs, skipped, bad = extract(args.corpus, args.data_dir, signal_length=args.signal_length,
                               workers=args.workers, skip_bad=args.skip_bad, progress=not args.quiet,
                               speaker_pattern=args.speaker_pattern, cache=None if args.force else args.output)
    if skipped:
        _warn(skipped)
    if bad:
        _warn(f"skipped {len(bad)} unreadable files (--skip-bad): " + "; ".join(bad))
    if fs.from_cache:
        print(f"{args.output} is up to date (same files and settings); --force recomputes it", file=sys.stderr)
    else:
        save_features(fs, args.output)
        if before is not None and before != fs.corpus:  # runs trained on the old file now refuse to resume
            _warn(f"{args.output}: its {before} features are replaced by {fs.corpus}'s")
    counts = ", ".join(f"{name} {int((fs.y == i).sum())}" for i, name in enumerate(fs.labels))
    named = fs.speakers is not None and not unnamed(fs.speakers)  # a folders tree without --speaker-pattern: ""
    speakers = len(set(fs.speakers.tolist())) if named else 0
    if (gap := missing_classes(fs)) is not None:
        _warn(f"{args.data_dir}: {gap}")
    full = CORPORA.get(fs.corpus.upper())
    noun = "utterance" if len(fs) == 1 else "utterances"
    if full is not None and full.n_files and len(fs) != full.n_files:
        # a part of a corpus is fine to train on, but its folds and figures are not the paper's
        _warn(f"{len(fs)} {fs.corpus} {noun}, where the paper's corpus has {full.n_files}: folds and "
              f"figures are not comparable with the paper's (`timnet corpora --check {fs.corpus.lower()} DIR`)")
    who = f"{speakers} speaker{'s' * (speakers != 1)}" if named else "speakers unknown"
    print(f"{fs.corpus}: {len(fs)} {noun} ({counts}), {who}, features {fs.x.shape[1:]} -> {args.output}")
    return 0


def _seeds(args, corpus: str) -> list[int]:
    from .corpora import paper_seed

    if args.seeds is not None and args.seed is not None:
        raise TimnetError("give --seed or --seeds, not both")
    if args.seeds is None:
        return [paper_seed(corpus, args.seed)]
    try:
        return [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise TimnetError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 46,47,48") from None


def _given_training_options(args) -> dict:
    """The recipe and run options given on the command line (they default to None: given means set)."""
    return {name: getattr(args, name) for name in (*RECIPE_OPTIONS, *RUN_OPTIONS) if getattr(args, name) is not None}


def _execution(args, folds_at_once: int):
    """(training config, device, threads per fold, backend) from the options train and sweep share."""
    from .backends import make_backend
    from .train import recipe_config, resolve_device

    given = _given_training_options(args)
    config = recipe_config(args.recipe, val_fraction=args.val_fraction, **given)
    if args.eval_every is not None and config.val_fraction == 0:
        _warn(f"--eval-every {args.eval_every} without --val-fraction: there is no validation share to evaluate")
    for axis in ("time", "freq"):
        if given.get(f"{axis}_mask_width") and f"{axis}_mask_width" in config.inert():
            _warn(f"--{axis}-mask-width {given[f'{axis}_mask_width']} without --{axis}-masks: no mask is drawn, so it "
                  "changes nothing")
    if config.plain_members and "plain_members" in config.inert():  # nothing to leave out
        _warn(f"--plain-members {config.plain_members} with no augmentation on: every member trains alike (give "
              "--vtlp, --tempo, --gain, --time-shift, masks or --mixup-alpha for a mixed ensemble)")
    cores = os.cpu_count() or 1
    if args.backend == "ray":
        # Ray places each fold on a node with these resources; torch uses the CPUs it was given.
        cpus = 1 if args.cpus_per_fold is None else args.cpus_per_fold
        gpus = 0 if args.gpus_per_fold is None else args.gpus_per_fold
        backend = make_backend("ray", address=args.address, cpus_per_fold=cpus,
                               gpus_per_fold=gpus)  # checks the resources before they are used
        device = "cuda" if gpus > 0 else "cpu"
        if args.device != "auto" and args.device != device:
            raise TimnetError(f"--device {args.device} with --backend ray: Ray chooses each fold's device; "
                              "give --gpus-per-fold G (> 0 trains on CUDA) and leave --device out")
        if args.workers is not None:
            raise TimnetError("--workers is for the local backend; with --backend ray, --cpus-per-fold sets how folds share nodes")
        workers = 1
        threads = args.threads if args.threads is not None else max(1, int(cpus))
    else:
        for option, value, instead in (("--cpus-per-fold", args.cpus_per_fold, "--workers and --threads share this machine's cores"),
                                       ("--gpus-per-fold", args.gpus_per_fold, "--device cuda trains on this machine's GPU")):
            if value is not None:
                raise TimnetError(f"{option} is for --backend ray; on the local backend {instead}")
        device = str(resolve_device(args.device))
        # On a GPU one fold at a time already fills the device; on CPUs folds run in parallel processes.
        default_workers = 1 if device.startswith("cuda") else max(1, min(cores, folds_at_once))
        workers = args.workers if args.workers is not None else default_workers
        threads = args.threads if args.threads is not None else max(1, cores // max(workers, 1))
        backend = make_backend(args.backend, workers=workers, address=args.address)
    if threads < 1:
        raise TimnetError(f"--threads {threads} invalid; expected a positive number")
    backend.start()
    return config, device, threads, backend


def _resolve_folds(args, fs) -> None:
    from .folds import default_folds

    if args.folds is None:
        args.folds = default_folds(args.split, fs.speakers)


def _model_overrides(args) -> dict:
    """Network settings given on the command line (the rest are the corpus's, SPEC.md §3)."""
    return {"dropout": args.dropout} if args.dropout is not None else {}


def cmd_train(args) -> int:
    from .evaluate import format_report
    from .features import in_order, load_features
    from .run import Run, execute_runs, seed_runs, summarize_seeds, train_all_data, write_seed_summary

    with _warnings_as_messages():
        fs = in_order(load_features(args.features, corpus=args.corpus), args.order)
    if args.all_data and (args.folds is not None or args.split != "random"):
        raise TimnetError("--all-data trains one model on every sample: --folds and --split do not apply; drop them")
    _resolve_folds(args, fs)
    seeds = _seeds(args, fs.corpus)
    if args.all_data and (len(seeds) > 1 or args.backend != "local"):
        raise TimnetError("--all-data trains one model here: give one --seed and the local backend")
    if args.all_data and args.workers is not None:
        raise TimnetError(f"--workers {args.workers} with --all-data: its model trains in this process, on --threads "
                          "threads (default: every core); drop --workers")
    if args.all_data and args.json:
        raise TimnetError(f"--json {args.json}: an --all-data model has no test split to score; "
                          "expected cross-validation (drop --all-data) for test figures")
    config, device, threads, backend = _execution(args, args.folds)
    model_overrides = _model_overrides(args)
    with folder_lock(args.output):  # one process writes a RUN_DIR at a time
        if args.all_data:
            with _warnings_at_once():
                path = train_all_data(fs, args.output, config=config, seed=seeds[0],
                                      threads=args.threads or os.cpu_count() or 1, device=device, path=args.path,
                                      overwrite=args.overwrite, progress=not args.quiet, model_overrides=model_overrides)
            what = "one model" if config.members == 1 else f"an ensemble of {config.members} models"
            from .checkpoint import read_checkpoint

            held = len(read_checkpoint(path)["extra"].get("val_idx") or [])  # --val-fraction's share, not trained on
            on = f"{len(fs) - held} of the {len(fs)} utterances ({held} held out for validation)" if held else \
                f"all {len(fs)} utterances"
            print(f"{what} on {on} -> {path} (no test score: use cross-validation for that)")
            return 0
        features_path = str(Path(args.features).resolve())

        def make_run(folder: Path, seed: int) -> Run:
            return Run(fs, folder, config=config, folds=args.folds, seed=seed, split=args.split, threads=threads,
                       device=device, path=args.path, features_path=features_path, model_overrides=model_overrides)

        runs = seed_runs(args.output, seeds=seeds, make_run=make_run, overwrite=args.overwrite)
        for run in runs:
            if run.resumed:
                finished = run.done_results()
                print(f"the run in {run.dir} is finished: its results are read again" if len(finished) == run.folds_n
                      else f"resuming the run in {run.dir}", file=sys.stderr)
                # a fold with figures and no weights counts as done (the ledger restores figures only):
                # said here, not first by `test` or `predict`
                bare = [run.fold_dir(k).name for k in finished if not (run.fold_dir(k) / "model.pt").exists()]
                if bare:
                    them = "it" if len(bare) == 1 else "them"
                    _warn(f"{run.dir}: " + weightless_words(bare, f", kept as done; `test` and `predict` cannot use {them}"))
        given = {run.dir for run in runs}
        others = sorted(p.name for p in Path(args.output).glob("seed_*")
                        if (p / RUN_FILE).is_file() and p not in given) if len(runs) > 1 else []
        if others:
            _warn(f"{args.output}: {', '.join(others)} not among --seeds: left as {'they are' if len(others) > 1 else 'it is'}, "
                  "and not in the summary")
        with _warnings_at_once():
            summaries = execute_runs(runs, backend=backend, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
        say = _Stdout(keep_going=bool(args.json) or not args.no_report)  # `train ... | head`: files still written
        if len(runs) == 1:
            say(format_report(summaries[0]))
            out = summaries[0]
        else:
            out = summarize_seeds(summaries)
            write_seed_summary(args.output, out)
            for s in out["per_seed"]:
                say(f"seed {s['seed']:>6}: WAR {s['mean_war']:.4f} +- {s['std_war']:.4f}  UAR {s['mean_uar']:.4f} +- {s['std_uar']:.4f}")
            say(f"{len(runs)} seeds: WAR {out['mean_war']:.4f} +- {out['std_war']:.4f}  "
                f"UAR {out['mean_uar']:.4f} +- {out['std_uar']:.4f} (mean +- sample std of the per-seed means)")
        if args.json:
            _write_results(args, out)
        if not args.no_report:
            from .report import plot_run, write_report

            for run in runs:
                with _warnings_as_messages():
                    path = write_report(run.dir, figures=plot_run(run.dir))
                say(f"report -> {path}")
        else:
            _warn_stale_reports([run.dir for run in runs])
        return say.status()


def _warn_stale_reports(run_dirs: list[Path]) -> None:
    """A report drawn (`timnet plot`) before folds that have finished since shows a run that no
    longer is; with --no-report it is left as it is, and said so."""
    from .report import REPORT_FILE

    for run_dir in run_dirs:
        report = run_dir / REPORT_FILE
        folds = list(run_dir.glob("fold_*/result.json"))
        if report.is_file() and folds and max(f.stat().st_mtime for f in folds) > report.stat().st_mtime:
            _warn(f"{report} was drawn before the last folds finished; `timnet plot {run_dir}` redraws it")


def cmd_sweep(args) -> int:
    from .corpora import paper_seed
    from .features import in_order, load_features
    from .run import Run
    from .sweep import first_trial, format_sweep, load_space, run_sweep

    space = load_space(args.space)
    for name in space:  # an option the space also sets would be silently overridden by it
        if getattr(args, name, None) is not None:  # training options default to None: given means set
            raise TimnetError(f"--{name.replace('_', '-')} {getattr(args, name)} and {args.space} both set {name}; "
                              "give it in one place")
    with _warnings_as_messages():
        fs = in_order(load_features(args.features, corpus=args.corpus), args.order)
    _resolve_folds(args, fs)
    seed = paper_seed(fs.corpus, args.seed)
    # the command line's options are checked beside the first trial's values (every trial sets them,
    # so no base config has its own): an error of theirs alone is said as theirs, not as the trial's
    from .train import recipe_config

    given = _given_training_options(args)
    first = first_trial(space, trials=args.trials, seed=seed)
    try:
        recipe_config(args.recipe, val_fraction=args.val_fraction, **given, **first)
    except TimnetError as e:
        recipe_config(args.recipe, val_fraction=args.val_fraction, **given)
        raise TimnetError(f"trial_001 ({first}): {e}") from None
    config, device, threads, backend = _execution(argparse.Namespace(**{**vars(args), **first}), args.folds * args.trials)
    features_path = str(Path(args.features).resolve())

    base_overrides = _model_overrides(args)

    def make_run(folder: Path, trial_config, model_overrides: dict) -> Run:
        return Run(fs, folder, config=trial_config, folds=args.folds, seed=seed, split=args.split, threads=threads,
                   device=device, path=args.path, features_path=features_path,
                   model_overrides={**base_overrides, **model_overrides}, evaluate_test=False)

    with folder_lock(args.output), _warnings_at_once():
        out = run_sweep(fs, args.output, space=space, trials=args.trials, base=config, backend=backend, seed=seed,
                        make_run=make_run, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr),
                        overwrite=args.overwrite, swa_follows_epochs=args.swa_epochs is None)
    say = _Stdout(keep_going=bool(args.json))
    say(format_sweep(out))
    if args.json:
        _write_results(args, out)
    return say.status()


def cmd_test(args) -> int:
    from .evaluate import format_report, score_weights
    from .features import load_features

    with _warnings_as_messages():
        fs = load_features(args.features, corpus=args.corpus)
        summary, outputs, fs = score_weights(fs, args.weights, seed=args.seed, folds=args.folds, order=args.order)
    say = _Stdout(keep_going=bool(args.json or args.plots))  # `test ... | head`: files still written
    say(format_report(summary))
    if args.json:
        _write_results(args, summary)
    if args.plots:
        from .report import plot_evaluation

        with _warnings_as_messages():
            written = plot_evaluation(fs, summary, outputs, args.plots, weights=args.weights)
        say(f"plots: {', '.join(sorted(written))} -> {args.plots}")
    return say.status()


def cmd_plot(args) -> int:
    from .report import REPORT_FILE, plot_run, write_report

    if Path(args.run_dir).is_dir():  # RUN_DIR's, whatever --out says: refused before the figures, not after
        check_output(Path(args.run_dir) / REPORT_FILE)
    with _warnings_as_messages():
        figures = plot_run(args.run_dir, out_dir=args.out, seed=args.seed, features=args.features)
        path = write_report(args.run_dir, figures=figures)
    print(f"plots: {', '.join(sorted(figures))} -> {Path(args.out or Path(args.run_dir) / 'plots')}; report -> {path}")
    return 0


@contextlib.contextmanager
def _warnings_as_messages():
    """Show library warnings as `timnet: warning: ...` lines instead of Python's format."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:  # a warning given before an error often explains it (a folder named for another corpus)
            for w in caught:
                _warn(str(w.message))


@contextlib.contextmanager
def _warnings_at_once():
    """Library warnings as `timnet: warning: ...` lines when they happen, for work that takes hours
    (_warnings_as_messages gives them at the end)."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: _warn(str(message))
        yield


def _write_results(args, obj) -> None:
    """The --json file, or with `--json -` the JSON on the stdout `main` kept aside for it."""
    if args.json != JSON_STDOUT:
        write_json(args.json, obj)
        return
    import json

    try:
        args.json_stdout.write(json.dumps(obj, indent=1) + "\n")
        args.json_stdout.flush()
    except BrokenPipeError:  # `--json - | head -c 100`: the plots and report still to write are written
        args.json_reader_left = True
        _silence_stdout(args.json_stdout)


@contextlib.contextmanager
def _report_to_stderr(args):
    """With `--json -`, everything the command prints goes to stderr and stdout carries the JSON alone."""
    if getattr(args, "json", None) != JSON_STDOUT:
        yield
        return
    args.json_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield


class _Stdout:
    """print() to a stdout whose reader may leave early (`predict DIR --json J | head -1`): with
    files still to write (`keep_going`) the work goes on silently and they are written; without,
    the command stops as a Unix tool does (`main` turns BrokenPipeError into the SIGPIPE status)."""

    def __init__(self, *, keep_going: bool):
        self.keep_going, self.closed = keep_going, False

    def status(self) -> int:
        """The command's exit status once its work is done: a shell's for SIGPIPE if the reader left, as
        `main` ends any other command whose reader left."""
        return EXIT_SIGPIPE if self.closed else 0

    def __call__(self, *values) -> None:
        if self.closed:
            return
        try:
            print(*values, flush=True)  # per line: the pipe's end is found here, not at exit
        except BrokenPipeError:
            if not self.keep_going:
                raise
            self.closed = True
            _silence_stdout()


def _silence_stdout(stream=None) -> None:
    """Point a stdout whose reader left at /dev/null, so that Python's own flush at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor (main() called in-process)
        os.dup2(os.open(os.devnull, os.O_WRONLY), (stream or sys.stdout).fileno())


def cmd_predict(args) -> int:
    from .predict import check_windowing, find_audio, load_model, one_piece_reason

    with _warnings_as_messages():
        predictor = load_model(args.model, corpus=args.corpus)
    check_windowing(args.window, args.hop, predictor.feature_config)
    entries: list[tuple[Path, str | None]] = []  # (file, why it cannot be predicted), in the order given
    for given in args.audio:
        try:
            entries += [(f, None) for f in find_audio([given])]
        except TimnetError as e:  # a folder with no audio: an error row, as a missing file is; the others go on
            if len(args.audio) == 1:
                raise
            entries.append((Path(given), str(e)))
    files = [f for f, _ in entries]
    refuse_output_among("json", args.json, files)  # the files found in a folder are inputs too
    rows, failures = [], 0
    say = _Stdout(keep_going=bool(args.json))
    bar = not args.quiet and sys.stderr.isatty()  # a long file's windows: worth a bar on a terminal only
    # the width of the names as printed (escaped newlines), and never narrower than the header's
    name_width = min(max(len("file"), *(len(_one_line(str(f))) for f in files)), 60)
    say(f"{'file':<{name_width}}  {'label':<10} {'conf':>6}  top-3")
    for path, error in entries:
        if error is None:
            try:
                pred = predictor.predict_file(path, window=args.window, hop=args.hop, progress=bar)
            except TimnetError as e:
                error = str(e)
        if error is not None:
            failures += 1
            rows.append({"file": str(path), "label": None, "probs": None, "error": error})
            say(f"{_one_line(str(path)):<{name_width}}  {'ERROR':<10} {'':>6}  {_one_line(error)}")
            message = error if str(path) in error else f"{path}: {error}"
            print(f"timnet: error: {_one_line(message)}", file=sys.stderr)  # stdout may be a pipe into another tool
            continue
        rows.append(pred.to_json())
        top = "  ".join(f"{name} {p:.2f}" for name, p in pred.top(3))
        say(f"{_one_line(str(path)):<{name_width}}  {pred.label:<10} {pred.probs[pred.label]:>6.3f}  {top}")
        for w in pred.windows if args.show_windows else []:
            say(f"{'':<{name_width}}    {w['start_s']:7.2f}-{w['end_s']:<7.2f} {w['label']:<10} {w['probs'][w['label']]:.3f}"
                + ("  (silent or quiet: not in the mean)" if w.get("quiet") else ""))
        if not pred.windows and args.show_windows and args.hop is None:  # asked for windows, none made (--hop: pred.warnings)
            _warn(f"{path}: scored in one piece ({one_piece_reason(args.window, predictor.feature_config)}): "
                  "no windows for --show-windows")
        for warning in pred.warnings:
            _warn(f"{path}: {warning}")
    if args.json:
        _write_results(args, rows)
    if failures:
        if len(files) > 1:  # one file: its error line says it all
            _warn(f"{failures} of {len(files)} files could not be predicted")
        return 1
    return say.status()


def cmd_export(args) -> int:
    from .onnx_export import check_onnx_path, export_checked
    from .predict import load_model

    check_onnx_path(args.output)
    with _warnings_as_messages():
        predictor = load_model(args.model, corpus=args.corpus, allow_onnx=False)
    path, gap = export_checked(predictor, args.output)
    check = ("not checked against torch (onnxruntime is not installed)" if gap is None
             else f"max |onnxruntime - torch| = {gap:.1e}")
    print(f"{path}: {len(predictor.models)} checkpoint(s), {predictor.networks} network(s), {len(predictor.labels)} classes; {check}")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_bench, run_bench

    with _warnings_at_once():  # a busy machine is said before minutes of timings, not after them
        result = run_bench(data_dir=args.data, workers=args.workers, log=lambda m: print(m, file=sys.stderr))
    say = _Stdout(keep_going=bool(args.json))
    say(format_bench(result))
    if args.json:
        _write_results(args, result)
    return say.status()


def _training_options(s, *, val_fraction: float) -> None:
    """Options shared by `train` and `sweep`: the recipe, the folds, and where folds run."""
    s.add_argument("--corpus", default=None, help="the corpus of an authors' .npy feature file")
    s.add_argument("--order", choices=ORDERS, default="spec", help="sample order, which decides the folds: spec (classes in label order, then the natural order of the path; the default) "
                        "or authors (their feature files: within a class by file name, then path ignoring case; the folds their CASIA weights were made on)")
    s.add_argument("--folds", type=int, default=None,
                   help="number of folds (default 10; with --split speaker, 10 or one per speaker if fewer)")
    s.add_argument("--split", choices=SPLITS, default="random", help="random: the paper's utterance-level KFold; speaker: no speaker on both sides")
    s.add_argument("--recipe", choices=RECIPE_NAMES, default="paper",
                   help="paper: the paper's protocol (default); strong: four models per fold (--members 4), each the "
                        "paper's training with mixup (--mixup-alpha 0.2) and its weights averaged over the last 100 "
                        "epochs (--swa-epochs 100, the last fifth of --epochs), their probabilities averaged; chosen on "
                        "validation data of EMODB and CASIA, see RESULTS.md; --members 1 gives one model in a quarter "
                        "of the time, --mixup-alpha 0 the strong recipe of earlier versions. "
                        "The options below override single values")
    for name, (typ, text) in RECIPE_OPTIONS.items():
        choices = SCHEDULES if name == "lr_schedule" else None
        s.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, choices=choices, help=text)
    s.add_argument("--dropout", type=float, default=None, help="spatial dropout of the temporal-aware blocks (default 0.1)")
    s.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    s.add_argument("--val-fraction", type=float, default=val_fraction,
                   help=f"validation share carved from each fold's training part: stratified by class, or whole "
                        f"speakers with --split speaker (default {val_fraction})")
    s.add_argument("--eval-every", type=int, default=None, help="epochs between validation passes (default 1)")
    s.add_argument("--select", choices=SELECTIONS, default=None, help="model kept per fold: last epoch (paper; the default) or best validation UAR")
    s.add_argument("--patience", type=int, default=None, help="stop a fold after this many epochs without a better validation UAR (default: never; needs a validation split)")
    s.add_argument("--save-every", type=int, default=None, help="epochs between resumable snapshots (default 10)")
    s.add_argument("--adam-eps-rule", choices=ADAM_EPS_RULES, default=None,
                   help="where Adam adds its epsilon (1e-8): torch (default: the paper's 1e-8 as PyTorch adds it) or keras "
                        "(to the uncorrected second moment, as the authors' Keras code: a larger epsilon in the first "
                        "few hundred steps). Part of the run's identity")
    s.add_argument("--workers", type=int, default=None, help="folds trained at once, in worker processes; an ensemble's members too (default: one per core, "
                        "at most one per fold (train) or per fold and trial (sweep); 1 on CUDA)")
    s.add_argument("--threads", type=int, default=None, help="torch threads per fold (default: cores / workers; with --all-data, every core); part of the run's identity, "
                   "since float results depend on it")
    s.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    s.add_argument("--path", choices=PATHS, default="auto",
                   help="fast: timnet.fast (native kernels, same mathematics); reference: the plain nn.Module; "
                        "auto (default): fast on CPUs, reference on CUDA. Part of the run's identity")
    s.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: every fold a Ray task (pip install -e '.[ray]')")
    s.add_argument("--address", default=None, help="Ray: address of a running cluster (default: start a local Ray instance)")
    s.add_argument("--cpus-per-fold", type=float, default=None, help="Ray: CPUs reserved per fold; torch threads per fold (default 1)")
    s.add_argument("--gpus-per-fold", type=float, default=None, help="Ray: GPUs per fold; > 0 trains on CUDA (default 0)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a run with a different configuration in the output folder (only the old run's files are deleted)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars (without it, stderr sent to a log file gets a plain line a minute)")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of every other bad input (its default prints the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"timnet: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (INTERFACE.md)."""
    p = _Parser(prog="timnet", description="TIM-Net speech emotion recognition (Ye et al., ICASSP 2023) in PyTorch.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"timnet {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser("corpora", help="list the supported corpora and their expected layouts; --check validates a copy")
    s.add_argument("--check", nargs=2, metavar=("CORPUS", "DIR"), default=None,
                   help="validate a corpus tree: counts per class and speaker, unreadable and unexpected files, "
                        "formats, and (EMODB, RAVDESS) every file against the publisher's sha256; exit 1 on problems")
    s.add_argument("--all", action="store_true", help="with --check: name every file of each kind (default: the first 20)")
    s.set_defaults(func=cmd_corpora)

    s = sub.add_parser("organize", help="arrange a corpus as OUT/<emotion>/<speaker>_<file> (symlinks or copies)")
    s.add_argument("corpus", metavar="CORPUS", help=f"one of {', '.join(CORPUS_NAMES)} (any case)")
    s.add_argument("src", metavar="SRC", help="the corpus as its publisher ships it (never modified)")
    s.add_argument("out", metavar="OUT", help="a new or empty folder (or one this command made: re-running changes nothing)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--link", action="store_true", help="symbolic links to the sources (default)")
    g.add_argument("--copy", action="store_true", help="copies of the sources")
    s.set_defaults(func=cmd_organize)

    s = sub.add_parser("download", help="download, unpack and verify EMODB or RAVDESS (the others: where to get them)")
    s.add_argument("corpus", metavar="CORPUS", help=f"one of {', '.join(CORPUS_NAMES)} (any case)")
    s.add_argument("dir", metavar="DIR", help="where the corpus is unpacked (an interrupted download resumes)")
    s.add_argument("--url", default=None, help="a mirror of the publisher's archive")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar (without it, stderr sent to a log file gets a plain line a minute)")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("extract", help="compute the paper's MFCC features of a corpus tree",
                       epilog="On x86-64 Linux with AVX2, numpy and OpenBLAS are pinned to their AVX2 paths so "
                              "that every such machine gives the same feature bits (TIMNET_NATIVE_DISPATCH=1: off).")
    s.add_argument("corpus", metavar="CORPUS", help=f"one of {', '.join(CORPUS_NAMES)} (any case), or `folders` "
                   "for DIR/<label>/*.wav trees with your own labels (needs --signal-length)")
    s.add_argument("data_dir", metavar="DATA_DIR", help="root of the corpus as its publisher ships it (folders: DIR/<label>/*.wav)")
    s.add_argument("-o", "--output", required=True, metavar="FEATURES.npz", help="where to write the features")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    s.add_argument("--signal-length", type=int, default=None, help="samples at 22050 Hz after centre pad/crop (default: the corpus's)")
    s.add_argument("--speaker-pattern", default=None, metavar="REGEX",
                   help="folders corpora: regex on the file name whose first group is the speaker")
    s.add_argument("--force", action="store_true", help="recompute even when FEATURES.npz is up to date")
    s.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable, empty or truncated audio files, and IEMOCAP utterances labelled "
                   "but without audio, instead of failing")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar (without it, stderr sent to a log file gets a plain line a minute)")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("train", help="cross-validated training, one model per fold (the paper's protocol by default)")
    s.add_argument("features", metavar="FEATURES", help="a timnet .npz, or an authors' .npy with --corpus")
    s.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder; an unfinished run there resumes")
    s.add_argument("--seed", type=int, default=None, help="fold and initialisation seed (default: the corpus's paper seed; 0 for folders corpora)")
    s.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="several seeds, one run each in RUN_DIR/seed_<s>; the JSON adds the mean and spread across seeds")
    _training_options(s, val_fraction=0.0)
    s.add_argument("--all-data", action="store_true", help="train the recipe's deployable model (with --members K, K of them in one checkpoint) on every sample "
                        "(no folds, no test score)")
    s.add_argument("--no-report", action="store_true", help="skip the plots and report.html written at the end")
    s.add_argument("--json", default=None, metavar="PATH", help="also write the results JSON here ('-': to stdout, the report to stderr)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="hyper-parameter search on validation data, then each fold's test split once, with the trial "
                        "its own validation share chose")
    s.add_argument("features", metavar="FEATURES", help="a timnet .npz, or an authors' .npy with --corpus")
    s.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="parameters to search: values or {choice|uniform|loguniform|randint|grid: [...]} (YAML or JSON)")
    s.add_argument("-o", "--output", required=True, metavar="SWEEP_DIR", help="sweep folder: trial_NNN runs, trials.csv, sweep.json")
    s.add_argument("--trials", type=int, default=8, help="random draws per grid point (default 8); identical draws run once")
    s.add_argument("--seed", type=int, default=None, help="seed of the draws, folds and initialisations (default: the corpus's paper seed; 0 for folders corpora)")
    _training_options(s, val_fraction=0.2)
    s.add_argument("--json", default=None, metavar="PATH", help="also write the sweep's JSON here ('-': to stdout, the report to stderr)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("test", help="evaluate one model per fold on its own test split")
    s.add_argument("features", metavar="FEATURES", help="a timnet .npz, or an authors' .npy with --corpus")
    s.add_argument("--weights", required=True, metavar="PATH", help="a RUN_DIR, or a folder of 10-fold_weights_best_<k>.hdf5")
    s.add_argument("--corpus", default=None, help="the corpus of an authors' .npy feature file")
    s.add_argument("--order", choices=ORDERS, default=None, help="sample order, which decides the folds: spec (classes in label order, then the natural order of the path) "
                        "or authors (their feature files: within a class by file name, then path ignoring case). Default: the models' own, "
                        "authors for the authors' weights (each fold model on its own test split), a RUN_DIR's from its run.json")
    s.add_argument("--folds", type=int, default=None,
                   help="number of folds of the authors' weights (10, the default); a RUN_DIR knows its own")
    s.add_argument("--seed", type=int, default=None, help="KFold seed of the authors' weights: only the corpus's paper seed (the default) re-derives their "
                        "test folds; a RUN_DIR knows its own")
    s.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON ('-': to stdout, the table to stderr)")
    s.add_argument("--plots", default=None, metavar="OUT_DIR", help="also write confusion, recall and t-SNE figures here")
    s.set_defaults(func=cmd_test)

    s = sub.add_parser("plot", help="training curves, confusion matrix, recall, t-SNE and report.html of a RUN_DIR")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a folder made by `timnet train`")
    s.add_argument("--out", default=None, metavar="DIR", help="where the figures go (default RUN_DIR/plots); report.html, which embeds them, is always written to RUN_DIR")
    s.add_argument("--seed", type=int, default=0, help="t-SNE seed (default 0; with its PCA start the embedding barely depends on it)")
    s.add_argument("--features", default=None, metavar="FEATURES",
                   help="the run's features file, if it moved from where run.json says (for the t-SNE; it must be the same file)")
    s.set_defaults(func=cmd_plot)
    s = sub.add_parser("predict", help="emotion and class probabilities of audio files")
    s.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files, or directories searched recursively")
    s.add_argument("--model", default="emodb", metavar="PATH",
                   help="bundled model name (default emodb), a checkpoint, a RUN_DIR (fold ensemble), "
                        "the authors' .hdf5 file or folder of them (with --corpus) or an .onnx file")
    s.add_argument("--corpus", default=None, help="the corpus of the authors' weights (their files do not say it)")
    s.add_argument("--window", type=float, default=None, help="window in seconds: a recording longer than it is scored in windows (default: the model's signal length, used beyond 2.5 times it)")
    s.add_argument("--hop", type=float, default=None, help="hop between windows in seconds (default: half a window)")
    s.add_argument("--show-windows", action="store_true", help="print each window's label under a windowed file")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar over a long file's windows (shown only on a terminal)")
    s.add_argument("--json", default=None, metavar="PATH", help="write the predictions as JSON ('-': to stdout, the table to stderr)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a model or fold ensemble to ONNX")
    s.add_argument("model", metavar="MODEL", help="bundled model name, checkpoint, RUN_DIR, or the authors' .hdf5 file or folder of them (with --corpus)")
    s.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the ONNX file")
    s.add_argument("--corpus", default=None, help="the corpus of the authors' weights (their files do not say it)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="speed figures of this machine: training, inference, extraction, memory")
    s.add_argument("--data", default=None, metavar="EMODB_DIR", help="also time the extraction of this EMODB tree")
    s.add_argument("--workers", type=int, default=None, help="fold workers for the fast path (default: one per core, at most 10, one per fold)")
    s.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON ('-': to stdout, the table to stderr)")
    s.set_defaults(func=cmd_bench)
    p.verbs = sub.choices  # main() names the verb's --help for an option it does not have
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's time limit) takes Ctrl-C's path: the workers are ended and
    the queue's manager shut down, instead of the default death that leaves them training as orphans."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _tolerant_streams() -> None:
    """A file name that is not valid UTF-8 (café in Latin-1) reaches Python as surrogates, which a
    strict stream (PYTHONIOENCODING=utf-8) cannot print: the name's own bytes go out instead, or an
    escape where the stream's encoding has no such byte, rather than a traceback mid-table."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            utf8 = codecs.lookup(stream.encoding).name == "utf-8"
            stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling begins (while parsing, say)
        print("timnet: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    import signal

    dispatch.pin()  # first, before anything imports numpy: the same feature bits on every x86-64 machine
    _tolerant_streams()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the verb's parser, whose --help lists the options it has
        parser.verbs[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        # restored after: main() may run in-process; a warning no verb gathers is still a `timnet: warning:` line
        with sigterm_handler(_on_sigterm), _report_to_stderr(args), _warnings_at_once():
            check_outputs(args)
            status = args.func(args)
        return EXIT_SIGPIPE if getattr(args, "json_reader_left", False) and status == 0 else status
    except TimnetError as e:
        print(f"timnet: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "NPY_DISABLE_CPU_FEATURES" not in str(e):
            raise
        # a numpy compiled with AVX-512 in its baseline cannot leave those loops out
        print(f"timnet: error: this numpy cannot run without AVX-512 ({os.environ.get('NPY_DISABLE_CPU_FEATURES')} "
              f"is its baseline); set {dispatch.OPT_OUT}=1 to use it as it is", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout closed early (`timnet predict DIR | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return EXIT_SIGPIPE
    except OSError as e:  # a disk full, a permission changed mid-run: still one line, naming the file
        print(_one_line(f"timnet: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}"), file=sys.stderr)
        return 1
    except _Terminated:
        print("timnet: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("timnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
