"""Shared by the table scripts: run `timnet train` (resuming), read its JSON, format Markdown, and
keep the ledger of finished folds.

The ledger (benchmarks/ledger/<table>/<run>/) holds the run.json and every finished fold's
result.json of the runs behind RESULTS.md's tables: figures only, never weights or features.
A table's compute (hours on two cores) can then be spread over several sessions or machines:
`restore` puts the recorded folds back into a fresh RUN_DIR, where timnet resumes the run as it
would its own (the identity in run.json must match, the snapshot interval aside, else timnet refuses the folder),
and trains only the folds missing; `record` copies the folds finished since.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

# these import no torch: ledger.py stays quick (training modules are imported where they are used)
from timnet.errors import TimnetError
from timnet.files import atomic_write, write_json
from timnet.rundir import decisive, fold_dirs, fold_files, history_name, read_identity, recorded_cpu_dispatch

# Published UAR / WAR (SPEC.md §4): the paper's (test-fold epoch selection, a leak) and the
# authors' post-fix figures (last epoch), where they published them.
PUBLISHED = {
    "CASIA": {"paper": (0.9467, 0.9467), "post_fix": (0.9108, 0.9108)},
    "EMODB": {"paper": (0.9517, 0.9570), "post_fix": (0.8919, 0.9028)},
    "EMOVO": {"paper": (0.9200, 0.9200), "post_fix": None},
    "IEMOCAP": {"paper": (0.7250, 0.7165), "post_fix": None},
    "RAVDESS": {"paper": (0.9193, 0.9208), "post_fix": (0.9004, 0.9007)},
    "SAVEE": {"paper": (0.8607, 0.8771), "post_fix": (0.7726, 0.7936)},
}


# The recipes a table can name, as `timnet train` options: timnet's presets, the strong preset's
# single model (its every fold's first member weight for weight), and the strong presets of earlier
# stops, whose tables the ledger keeps under these names. RESULTS.md says when each was the preset.
RECIPE_ARGS = {  # name: (timnet preset, options over it)
    "paper": ("paper", {}),
    "strong": ("strong", {}),
    "strong-1member": ("strong", {"members": 1}),
    # the strong recipes of earlier stops, SWA members without mixup, by their selection names:
    # one member (before stop 22), two (stops 22-29), four (stops 30-51)
    "swa": ("paper", {"swa_epochs": 100}),
    "swa-x2": ("paper", {"swa_epochs": 100, "members": 2}),
    "swa-x4": ("paper", {"swa_epochs": 100, "members": 4}),
    # the paper's recipe with Adam's epsilon where the authors' Keras adds it (to measure the rule)
    "paper-keras-eps": ("paper", {"adam_eps_rule": "keras"}),
}


def recipe_args(name: str) -> tuple[str, ...]:
    """The `timnet train` options of a table's recipe name (RECIPE_ARGS)."""
    if name not in RECIPE_ARGS:
        raise SystemExit(f"recipe {name!r} unknown; expected one of {', '.join(RECIPE_ARGS)}")
    preset, overrides = RECIPE_ARGS[name]
    return ("--recipe", preset, *(a for k, v in overrides.items() for a in (f"--{k.replace('_', '-')}", str(v))))


def table_recipes(recipes: str, first_members: str | None) -> tuple[list[str], str | None]:
    """A table script's --recipes and --first-members, checked before hours of training: the
    names, and the one-member recipe that gives the ensembles their member 0 (by default
    strong-1member when it is among the recipes)."""
    names = recipes.split(",")
    for name in names:
        recipe_args(name)
    if first_members is None and "strong-1member" in names:
        first_members = "strong-1member"
    if first_members is not None and recipe_members(first_members) != 1:
        raise SystemExit(f"--first-members {first_members}: expected a one-member recipe")
    return names, first_members


def recipe_members(name: str) -> int:
    """Models per fold of a table's recipe name."""
    return _recipe_config(name).members


def _recipe_config(name: str):
    from timnet.train import recipe_config

    recipe_args(name)  # checks the name
    preset, overrides = RECIPE_ARGS[name]
    return recipe_config(preset, **overrides)


def gives_first_member(first_members: str | None, name: str) -> bool:
    """Whether the one-member recipe `first_members` trains, weight for weight, member 0 of the
    ensemble recipe `name` (the same training with one member): `strong-1member` gives `strong`'s,
    not `swa-x4`'s, whose members train without mixup. Another recipe's models taken as member 0
    would make the ensemble's run folder hold a configuration that is not its own."""
    if first_members is None or recipe_members(name) == 1:
        return False
    # compared as runs' members are (_member_identity), on configs alone
    return _member_identity({"train_config": asdict(_recipe_config(name))}, 0) == \
        _member_identity({"train_config": asdict(_recipe_config(first_members))}, 0)


def timnet() -> str:
    """The timnet console script of the interpreter running this script."""
    return str(Path(sys.executable).with_name("timnet"))


def train(features: str, run_dir: Path, *args: str, record_as: str | None = None) -> tuple[dict, float]:
    """`timnet train` (resumes a finished or interrupted run); (its JSON, wall seconds of this call).

    With `record_as`, each fold is recorded in the ledger under that key as soon as timnet says it
    finished: a session's end kills the run at once, with no `finally` left to record it."""
    out = Path(str(run_dir) + ".json")
    t0 = time.time()
    cmd = [timnet(), "train", features, "-o", str(run_dir), "--json", str(out), "-q", "--no-report", *args]
    print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stderr:  # timnet's own lines, passed on as they come
            sys.stderr.write(line)
            sys.stderr.flush()
            if record_as and FOLD_DONE.search(line):
                record(run_dir, record_as)
    if proc.returncode != 0:
        raise SystemExit(1)  # timnet has said why on stderr
    return json.loads(out.read_text()), time.time() - t0


FOLD_DONE = re.compile(r"fold \d+/\d+: (WAR|validation WAR|diverged) ")  # timnet.run.execute_runs's line for a fold trained


def fold_seconds(run_dir: Path) -> float:
    """Training seconds summed over a run's folds (the folds ran two at a time on two cores)."""
    total = 0.0
    for path in sorted(Path(run_dir).glob("**/fold_*/result.json")):
        total += json.loads(path.read_text()).get("seconds", 0.0)
    return total


def environment(run_dir: Path) -> dict:
    """Versions and command recorded by timnet in the run folder, and the machine."""
    files = sorted(Path(run_dir).glob("**/run.json"))
    run = json.loads(files[0].read_text()) if files else {}
    return {"versions": run.get("versions"), "command": run.get("command"), "machine": platform.platform()}


def _copy(src: Path, dst: Path) -> None:
    """src copied to dst through a temporary file: a session's end during `record` (which runs after
    an interrupted table) leaves the ledger's previous file or the whole new one, never half."""
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_main(main) -> None:
    """sys.exit(main()), with bad input (a TimnetError: a missing file, a refused folder) said in one
    line, as the `timnet` command says it, rather than as a traceback."""
    try:
        code = main()
    except TimnetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


def seed_run(run: Path, seed: int, seeds: list[int]) -> Path:
    """Where `timnet train --seeds` keeps a seed's run: RUN_DIR/seed_<s>, or RUN_DIR itself for one seed."""
    return run if len(seeds) == 1 else run / f"seed_{seed}"


def pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def paired_difference(a: dict, b: dict, *, cluster=None) -> dict | None:
    """a[k] - b[k] over the keys both have (folds matched by their key, never by position): the
    mean, its standard error with the differences taken as independent, how many are above and
    below zero, and with `cluster` (key -> group) the standard error of the groups' mean
    differences, where folds of one group share their test utterances (one speaker's folds under
    several seeds) and so count once. None where no key is shared."""
    import numpy as np

    keys = [k for k in a if k in b]
    if not keys:
        return None
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    out = {"n": len(d), "mean": float(d.mean()), "se": _standard_error(d), "ahead": int((d > 0).sum()),
           "behind": int((d < 0).sum())}
    if cluster is not None:
        groups: dict = {}
        for k, v in zip(keys, d):
            groups.setdefault(cluster(k), []).append(v)
        out["groups"] = len(groups)
        out["se_groups"] = _standard_error(np.array([np.mean(v) for v in groups.values()]))
    return out


def _standard_error(d) -> float | None:
    """Sample std / sqrt(n); None from one value (no spread to measure)."""
    return float(d.std(ddof=1) / len(d) ** 0.5) if len(d) > 1 else None


def signed(p: dict | None, se: str = "se") -> str:
    """A paired difference as `+0.0123 ± 0.0045`, or `+0.0123 (1 fold)` without a spread."""
    if not p:
        return ""
    return f"{p['mean']:+.4f} ± {p[se]:.4f}" if p[se] is not None else f"{p['mean']:+.4f} (1 fold)"


LEDGER = Path(__file__).parent / "ledger"


def _identity(run_file: Path) -> dict | None:
    """A run.json's identity as timnet compares runs: options added since it was written at their
    defaults (as `timnet train` reads it), without the options that change no figure; None where
    it cannot be read."""
    try:
        return decisive(read_identity(run_file.parent))
    except TimnetError:
        return None


def _mismatch(here: Path, ledger: Path, key: str) -> str | None:
    """Why a run folder's run.json and the ledger's of `key` are not one run (None where they
    are): one of them cannot be read, or they hold two configurations."""
    for f in (here, ledger):
        if _identity(f) is None:
            return f"{f} cannot be read"
    return None if _identity(here) == _identity(ledger) else f"{here.parent} holds another configuration than {key}"


def check_run_is(run_dir: Path, recipe: str, *, seed: int, fingerprint: str, folds: int, split: str,
                 ledger_key: str | None = None) -> None:
    """Refuse a run folder whose run.json is not the table's recipe, seed, features and folds.

    A table reads every finished fold in RUNS/<recipe>: a folder left there by another
    configuration (an earlier preset under today's name, another seed) would otherwise be printed
    under this recipe's name. With `ledger_key`, run_dir is that ledger entry, checked before it
    is restored (moving a run folder away does not help when the ledger holds the other run)."""
    if not (Path(run_dir) / "run.json").is_file():
        return  # nothing trained there yet
    from timnet.run import changed

    have = read_identity(run_dir)  # a run.json that cannot be read is an error naming it
    want = {"train_config": asdict(_recipe_config(recipe)), "seed": seed, "features_fingerprint": fingerprint,
            "folds": folds, "split": split}
    diff = changed({k: have[k] for k in want if k in have}, want)
    if not diff:
        return
    shown = ", ".join(f"{d} {_value(have, d)} (expected {_value(want, d)})" for d in diff[:4])
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    fix = (f"the ledger's {ledger_key} is another run: record this table's under another key (benchmarks/ledger.py)"
           if ledger_key else "move it away, or give another --runs")
    raise TimnetError(f"{run_dir}: holds another run than recipe {recipe!r} with seed {seed} on these features: "
                      f"{shown}{more}; {fix}")


def restore_checked(run_dir: Path, key: str, recipe: str, seeds: list[int], **expected) -> int:
    """`restore` of a table's run, each seed's run checked before and after (check_run_is): the
    ledger's entry before it is copied, then the run folder, which may hold a run of its own."""
    for s in seeds:
        check_run_is(seed_run(LEDGER / key, s, seeds), recipe, seed=s, **expected, ledger_key=key)
    n = restore(run_dir, key)
    for s in seeds:
        check_run_is(seed_run(Path(run_dir), s, seeds), recipe, seed=s, **expected)
    return n


def _value(identity: dict, dotted: str) -> str:
    """An identity entry (`train_config.epochs`) as a message shows it; `not set` where it is absent."""
    value = identity
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "not set"
        value = value[part]
    return repr(value)


def _runs(root: Path) -> list[Path]:
    """The run folders at or below root (a single run, or the seed_* runs of several seeds)."""
    return sorted(p.parent.relative_to(root) for p in root.glob("**/run.json"))


def restore(run_dir: Path, key: str) -> int:
    """Copy the ledger's folds of `key` into run_dir where run_dir lacks them; the number of folds restored.

    A run_dir that holds a run of another identity is left alone (timnet would refuse the mix)."""
    src, run_dir = LEDGER / key, Path(run_dir)
    n = 0
    for rel in _runs(src) if src.is_dir() else []:
        here = run_dir / rel
        if (here / "run.json").is_file() and (why := _mismatch(here / "run.json", src / rel / "run.json", key)):
            print(f"ledger: {why}: not restored", file=sys.stderr)
            continue
        here.mkdir(parents=True, exist_ok=True)
        if not (here / "run.json").is_file():
            _copy(src / rel / "run.json", here / "run.json")
        for result in sorted((src / rel).glob("fold_*/result.json")):
            fold = here / result.parent.name
            if not (fold / "result.json").exists():
                fold.mkdir(exist_ok=True)
                for partial in (*fold.glob("state*.pt"), *fold.glob("member_*.pt")):
                    partial.unlink()  # the fold is finished: its partial training is no longer needed
                _copy(result, fold / "result.json")
                n += 1
    if n:
        print(f"ledger: {n} finished folds of {key} restored into {run_dir}", file=sys.stderr, flush=True)
    return n


def record(run_dir: Path, key: str, *, replace: bool = False) -> int:
    """Copy run_dir's run.json and finished folds into the ledger under `key`; the number of folds
    recorded. A key that holds another configuration is replaced only with `replace` (a stale
    RUN_DIR that timnet refused must not overwrite the ledger's folds)."""
    run_dir, n = Path(run_dir), 0
    for rel in _runs(run_dir):
        target = LEDGER / key / rel
        if _identity(run_dir / rel / "run.json") is None:  # never into the ledger, nor in place of a readable entry
            print(f"ledger: {run_dir / rel / 'run.json'} cannot be read: not recorded", file=sys.stderr)
            continue
        if (target / "run.json").is_file() and (why := _mismatch(run_dir / rel / "run.json", target / "run.json", key)):
            if not replace:
                print(f"ledger: {why}: not recorded (benchmarks/ledger.py record --replace replaces the key)",
                      file=sys.stderr)
                continue
            shutil.rmtree(target)
        target.mkdir(parents=True, exist_ok=True)
        _copy(run_dir / rel / "run.json", target / "run.json")
        for result in fold_files(run_dir / rel, "result.json"):  # not a user's fold_01_old beside them
            (target / result.parent.name).mkdir(exist_ok=True)
            _copy(result, target / result.parent.name / "result.json")
            n += 1
    return n


def take_first_members(run_dir: Path, source: Path, *, members: int) -> int:
    """first_members_from, and a line on stderr when `source` has no fold models to give (a run
    restored from the ledger keeps figures only), since every member then trains: hours more."""
    n = first_members_from(run_dir, source, members=members)
    if not n and not any(Path(source).glob("fold_*/model.pt")) and not _all_folds_done(run_dir):
        print(f"{source}: no fold models (a ledger restore keeps figures only): every member of {run_dir} trains",
              file=sys.stderr, flush=True)
    return n


def _all_folds_done(run_dir: Path) -> bool:
    """Every fold of the run in `run_dir` has its result (then nothing trains, members or not)."""
    try:
        folds = json.loads((Path(run_dir) / "run.json").read_text())["identity"]["folds"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return len(fold_files(run_dir, "result.json")) >= folds


def first_members_from(run_dir: Path, source: Path, *, count: int = 1, members: int | None = None) -> int:
    """members_from for members 0..count-1, all of them or none (a one-member run's, or a smaller
    ensemble's, whole model for a larger one)."""
    return members_from(run_dir, source, which=range(count), members=members)


def members_from(run_dir: Path, source: Path, *, which=None, members: int | None = None) -> int:
    """Put into `run_dir`, an ensemble, as its folds' finished members, every member of `source`'s
    finished fold models that trains as its own member of the same index does (only those in
    `which`, all of them or none, when given); the number of folds given members.

    Member m of an ensemble is the same weights whatever the ensemble's size (its seed depends on m
    alone: tests/test_members.py), and a plain member (--plain-members) is the member of the run
    without augmentation, so a one-member run gives an ensemble its member 0, swa-x4 gives
    swa-mixed-x4 its plain members 0-1 and swa+vtlp+gain-x4 its augmented members 2-3: training
    them again would repeat hours of compute to get the same weights. A run_dir without run.json
    gets the source's identity with `members` (timnet refuses the folder later if that is not what
    its options give). A source of another configuration, features or split gives nothing. The
    source's folds keep only their final (averaged) weights, so a fold given members this way
    reports no "last weights" figures of the members together: the source run reports its own.
    """
    import torch
    from timnet.checkpoint import load_checkpoint
    from timnet.model import TIMNetEnsemble
    from timnet.run import prepare_run_dir

    run_dir, source = Path(run_dir), Path(source)
    if not (source / "run.json").is_file():
        return 0
    have = read_identity(source)
    if not (run_dir / "run.json").is_file():
        if members is None:
            raise ValueError(f"{run_dir}: no run.json; pass members to derive it from {source}")
        identity = {**have, "train_config": {**have["train_config"], "members": members}}
        prepare_run_dir(run_dir, identity, overwrite=False, extra={"first_member_from": str(source)})
    want = read_identity(run_dir)
    size = want["train_config"]["members"]
    wanted = range(size) if which is None else sorted(set(which))
    shared = [m for m in shared_members(have, want) if m in wanted]
    if shared and (skew := _dispatch_skew([recorded_cpu_dispatch(source)], want, shared)):
        print(f"{run_dir}: members {', '.join(map(str, skew))} not taken from {source}: they train with --vtlp, "
              "which rounds apart under numpy's AVX-512 and AVX2 loops, and the source trained under the other ones",
              file=sys.stderr, flush=True)
        shared = [m for m in shared if m not in skew]
    if size < 2 or not shared or len(shared) < len(wanted) and which is not None:
        return 0  # a one-model run keeps no members; another configuration, features or split
    n = 0
    for sdir in fold_dirs(source):  # only the folds timnet writes (not a copy such as fold_01_old)
        fdir = run_dir / sdir.name
        give = [m for m in shared if not (fdir / f"member_{m}.pt").exists()]
        if (fdir / "result.json").exists() or not give or not ((sdir / "model.pt").is_file() and (sdir / "result.json").is_file()):
            continue
        done = json.loads((sdir / "result.json").read_text())
        if mkl := _mkl_skew(done, source):
            print(f"{fdir}: no members taken from {sdir}: it trained on {mkl}, and torch's MKL chooses its kernels by them",
                  file=sys.stderr, flush=True)
            continue
        if skew := _dispatch_skew(done.get("cpu_dispatch", []), want, give):  # a part trained elsewhere
            print(f"{fdir}: members {', '.join(map(str, skew))} not taken from {sdir}: they train with --vtlp, and "
                  "part of that fold trained under the other numpy loops", file=sys.stderr, flush=True)
            if not (give := [m for m in give if m not in skew]):
                continue
        model = load_checkpoint(sdir / "model.pt")[0]
        nets = list(model.members) if isinstance(model, TIMNetEnsemble) else [model]
        fdir.mkdir(parents=True, exist_ok=True)
        for m in give:
            member = _member(nets[m], done, sdir / history_name(m),
                             done["member_seconds"][m] if "member_seconds" in done else done.get("seconds", 0.0), source)
            with atomic_write(fdir / f"member_{m}.pt") as tmp:
                torch.save(member.to_dict(), tmp)
        n += 1
    if n:
        label = f"member {shared[0]}" if len(shared) == 1 else f"members {', '.join(map(str, shared))}"
        print(f"{run_dir}: {label} taken from {source}'s finished fold models ({n} fold{'s' if n > 1 else ''})",
              file=sys.stderr, flush=True)
    return n


def shared_members(source: dict, identity: dict) -> list[int]:
    """The members of the run of `identity` that the run of `source` (both run.json identities)
    trains alike, weight for weight: what members_from can give it."""
    return [m for m in range(identity["train_config"].get("members", 1))
            if _member_identity(source, m) is not None and _member_identity(source, m) == _member_identity(identity, m)]


def _dispatch_skew(records: list[dict], want: dict, members: list[int]) -> list[int]:
    """The members with VTLP that processes of `records` (timnet.dispatch.state: the source run's
    beginning, or a source fold's cpu_dispatch) trained under other numpy loops than this process
    runs (timnet.run.dispatch_change: VTLP alone reads numpy's arithmetic); none where the loops
    are not recorded."""
    from timnet import dispatch

    now = dispatch.state()["numpy_avx512"]
    if all(r.get("numpy_avx512") in (None, now) for r in records):
        return []
    return [m for m in members if _member_identity(want, m)["train_config"]["vtlp"]]


def _mkl_skew(done: dict, source: Path) -> str | None:
    """How torch's MKL ran another way where a source fold trained (its result's `worker`, else the
    process that began the source run, and every process that trained a member or a part of one:
    its `cpu_dispatch`) than for the run taking its members (`_taker_mkl`; timnet.dispatch.mkl_change),
    or None: every member's products go through it, so that fold's members are not the weights the
    run would train."""
    from timnet import dispatch

    where = [done["worker"] if isinstance(done.get("worker"), dict) else recorded_cpu_dispatch(source),
             *done.get("cpu_dispatch", [])]
    taker = _taker_mkl()
    return next((mkl for w in where if (mkl := dispatch.mkl_change(w, taker))), None)


def _taker_mkl() -> dict:
    """This process's MKL record (timnet.dispatch.state): the benchmark scripts pin first, so it is
    that of the workers they start, which train the taking run."""
    from timnet import dispatch

    return dispatch.state()


def _member_identity(identity: dict, m: int) -> dict | None:
    """What decides the weights of a run's member m, None where it has none: the run's identity with
    the options member m trains with (timnet.train.TrainConfig.for_member), less the ensemble's size
    and plain count, which do not reach it."""
    from dataclasses import fields

    from timnet.train import TrainConfig

    tc = identity["train_config"]
    if m >= tc.get("members", 1):
        return None
    config = TrainConfig(**{f.name: tc[f.name] for f in fields(TrainConfig) if f.name in tc}).for_member(m)
    own = {k: v for k, v in {**tc, **asdict(config)}.items() if k not in ("members", "plain_members")}
    return decisive({**identity, "train_config": own})


def _member(net, done: dict, history_csv: Path, seconds: float, source: Path):
    """A finished fold's member as timnet.train keeps one (Member): its final weights alone, and the
    run it was trained in."""
    import csv

    from timnet.train import Member

    with open(history_csv, newline="") as f:
        history = [{key: float(v) for key, v in row.items() if v != ""} for row in csv.DictReader(f)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    return Member(net, net, done["epoch"], done["epochs_run"], done["stopped_early"], done["arithmetic"], history, seconds,
                  str(source), done.get("cpu_dispatch", []))  # the fold's machines: a member's own are not kept
