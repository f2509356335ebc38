"""Shared by the table scripts: run `timnet train` (resuming), read its JSON, format Markdown."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

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


def timnet() -> str:
    """The timnet console script of the interpreter running this script."""
    return str(Path(sys.executable).with_name("timnet"))


def train(features: str, run_dir: Path, *args: str) -> tuple[dict, float]:
    """`timnet train` (resumes a finished or interrupted run); (its JSON, wall seconds of this call)."""
    out = Path(str(run_dir) + ".json")
    t0 = time.time()
    cmd = [timnet(), "train", features, "-o", str(run_dir), "--json", str(out), "-q", *args]
    print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(1)  # timnet has said why on stderr
    return json.loads(out.read_text()), time.time() - t0


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


def write_json(path: str, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


def pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"
