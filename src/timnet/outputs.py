"""The output paths of a command line, checked before any work starts: an empty path, a file that
is one of the command's own inputs, a JSON or figures that would land among a run folder's own
files, two outputs at one path. Each is refused with one line, not found after hours of training."""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

from .errors import TimnetError
from .files import check_output
from .rundir import RUN_FILE, RUN_FILES, refuse_foreign_figures

JSON_STDOUT = "-"  # `--json -`: the JSON on stdout, for a pipe into jq; the report lines then go to stderr

# Commands whose -o names a folder (the others' -o is a file); --plots and --out are folders.
FOLDER_OUTPUTS = ("train", "sweep")
INPUTS = ("features", "data_dir", "src", "run_dir", "model", "weights", "space", "audio")
# the subfolders timnet writes into a run, a run's seeds or a sweep
RUN_SUBFOLDER = re.compile(r"(fold|seed|trial)_\d+|plots")


def check_outputs(args) -> None:
    """Outputs are checked before the work, not after hours of it."""
    for name in ("json", "output", "plots", "out", "dir"):
        if getattr(args, name, None) == "":  # `--json "$UNSET"`: an error, not silently no file (nor the current folder)
            flag = "DIR" if name == "dir" else "OUT" if args.verb == "organize" else f"--{name}"
            raise TimnetError(f"{flag} '': empty path; expected a file or folder name")
    for name in INPUTS:  # `--model "$UNSET"` would read the current folder (Path("") is ".")
        value = getattr(args, name, None)
        if value == "" or (isinstance(value, list) and "" in value):
            flag = (f"--{name}" if name in ("weights", "space") or (name, args.verb) in (("model", "predict"), ("features", "plot"))
                    else name.upper())
            raise TimnetError(f"{flag} '': empty path; expected a file or folder name")
    if getattr(args, "json", None) not in (None, JSON_STDOUT):
        check_output(args.json)
    if getattr(args, "output", None):
        check_output(args.output, folder=args.verb in FOLDER_OUTPUTS)
    for name in ("plots", "out"):
        if getattr(args, name, None):
            check_output(getattr(args, name), folder=True)
    _refuse_foreign_figures(args)
    _check_not_an_input(args)  # before the clash check: its messages are the more precise (`--json RUN` for a RUN
    # not yet made: "is the run folder itself")
    for name in ("json", "output"):  # `-o new/` means a folder, though Path() drops the slash and writes a file `new`
        value = str(getattr(args, name, None) or "")
        wants_file = value != JSON_STDOUT and not (name == "output" and args.verb in FOLDER_OUTPUTS)
        if wants_file and value.endswith(tuple(filter(None, (os.sep, os.altsep)))):
            raise TimnetError(f"--{name} {value} ends in a slash, a folder; expected a file path")
    given = [(name, value) for name in ("json", "output", "plots", "out")
             if (value := getattr(args, name, None)) and value != JSON_STDOUT]
    for i, (name, value) in enumerate(given):  # `--json X --plots X`: the second would fail after the work
        if clash := next((other for other, v in given[:i] if Path(v).resolve() == Path(value).resolve()), None):
            raise TimnetError(f"--{clash} and --{name} are both {value}; expected a different path for each output")


def _check_not_an_input(args) -> None:
    """Refuse an output file that is one of the command's own input files (`--json clip.wav`):
    it would be replaced by the output, and an input is never ours to overwrite."""
    inputs = []
    for name in INPUTS:
        value = getattr(args, name, None)
        inputs += value if isinstance(value, list) else [value] if value else []
    for name in ("json", "output"):
        refuse_output_among(name, getattr(args, name, None), inputs)
    _refuse_json_in_a_run(args)
    _refuse_figures_in_a_run(args)


def _is_run_folder(f: Path) -> bool:
    """A folder timnet has trained into (the authors' .hdf5 folder is not one: nothing of ours to keep)."""
    return (f / RUN_FILE).is_file() or any(f.glob("fold_*")) or (f / "model.pt").is_file()


def _holds_a_run(f: Path) -> bool:
    """A folder that surely is timnet's: a run, the seeds of one, a sweep (a user's folder that only
    holds a model.pt or a fold_plan.txt is not)."""
    from .run import SEEDS_FILE

    return any((f / name).is_file() for name in (RUN_FILE, SEEDS_FILE, "sweep.json")) or \
        any(f.glob(f"seed_*/{RUN_FILE}")) or any(f.glob(f"trial_*/{RUN_FILE}"))


def _refuse_figures_in_a_run(args) -> None:
    """Refuse figures written into a run folder other than the one plotted (`test --plots RUN/plots`):
    they would replace some of its figures and leave the others, a folder showing two models."""
    for name, out in _figure_folders(args):
        target = Path(out).resolve()
        if getattr(args, "run_dir", None) and Path(args.run_dir).resolve() in (target, *target.parents):
            continue  # `plot RUN --out RUN/plots`: the run's own figures
        for folder in [target, *target.parents]:
            if folder.is_dir() and _holds_a_run(folder):
                inside = target.relative_to(folder).parts
                if not inside or RUN_SUBFOLDER.fullmatch(inside[0]):
                    raise TimnetError(f"--{name} {out} is {'the run folder' if not inside else 'inside the run folder'} "
                                      f"{folder}, whose figures it would mix with others; expected a folder outside it")


def _figure_folders(args) -> list[tuple[str, str]]:
    """(option, folder) of the figures a command writes: `test --plots`, `plot --out` (organize's
    OUT is a corpus folder, not figures)."""
    return [(name, out) for name in ("plots", "out") if (out := getattr(args, name, None)) and args.verb != "organize"]


def _refuse_foreign_figures(args) -> None:
    """Refuse a figures folder (`plot --out`, `test --plots`) holding a file of the user's under a
    figure's name: drawing would replace it. A run's own plots/ is timnet's, marked or not (figures
    written before the mark)."""
    for name, out in _figure_folders(args):
        if getattr(args, "run_dir", None) and Path(out).resolve() == (Path(args.run_dir) / "plots").resolve():
            continue
        refuse_foreign_figures(Path(out), given=f"--{name} {out}")


def _refuse_json_in_a_run(args) -> None:
    """Refuse a --json that is one of the files timnet keeps in a run folder: the one the command
    trains or reads, or any other that holds the path (`--json RUN_DIR/run.json` would leave a run
    that neither resumes nor tests)."""
    out = getattr(args, "json", None)
    if not out or out == JSON_STDOUT:
        return
    read = [getattr(args, name, None) for name in ("weights", "model", "run_dir")]
    folders = [getattr(args, "output", None) if args.verb in FOLDER_OUTPUTS else None,  # made by this command
               *(f for f in read if f and Path(f).is_dir() and _is_run_folder(Path(f)))]
    # another run's folder holding the path (`predict --json RUN/fold_01/result.json`), through links too
    folders += [str(f) for f in reversed(Path(out).resolve().parents) if f.is_dir() and _holds_a_run(f)]
    for folder in folders:
        if not folder or (Path(folder).exists() and not Path(folder).is_dir()):
            continue
        try:
            inside = Path(out).resolve().relative_to(Path(folder).resolve()).parts
        except ValueError:
            continue
        if not inside:  # a run folder not made yet: the JSON would fail only after the training
            raise TimnetError(f"--json {out} is the run folder itself; expected a file path (e.g. {out.rstrip('/')}.json)")
        first = inside[0]
        own = (len(inside) > 1 and RUN_SUBFOLDER.fullmatch(first)
               or any(fnmatch.fnmatch(first, pattern) for pattern in RUN_FILES))
        if own:
            raise TimnetError(f"--json {out} is a file timnet keeps in the run folder {folder}; "
                              "expected another name or a path outside it")


def refuse_output_among(name: str, out: str | None, inputs: list) -> None:
    """Refuse --NAME OUT when it is one of `inputs` (those that exist: a missing one is its own error)."""
    if not out or (name == "json" and out == JSON_STDOUT) or not Path(out).is_file():
        return
    for given in inputs:
        if Path(given).is_file() and os.path.samefile(out, given):
            raise TimnetError(f"--{name} {out} is the input {given}; expected another path for the output")
