"""Record or restore the finished folds of a run in benchmarks/ledger (see _common.py).

    python benchmarks/ledger.py record runs/select_emodb/swa select_emodb_5folds_val0.2/swa
    python benchmarks/ledger.py restore runs/select_emodb/swa select_emodb_5folds_val0.2/swa

The table scripts do both themselves; this is for a run stopped before its table was written
(a session's end), so that its finished folds are not trained again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import record, restore, run_main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("record", "restore"))
    p.add_argument("run_dir", type=Path, help="the RUN_DIR (or the folder of its seed_* runs)")
    p.add_argument("key", help="its place in the ledger, e.g. select_emodb_5folds_val0.2/swa")
    p.add_argument("--replace", action="store_true", help="record: replace a key that holds another configuration")
    args = p.parse_args()
    if args.action == "record":
        if not (args.run_dir / "run.json").is_file() and not list(args.run_dir.glob("seed_*/run.json")):
            print(f"ledger: {args.run_dir}: not a timnet RUN_DIR", file=sys.stderr)
            return 2
        print(f"ledger: {record(args.run_dir, args.key, replace=args.replace)} finished folds of {args.run_dir} recorded as {args.key}")
    else:
        print(f"ledger: {restore(args.run_dir, args.key)} folds restored")
    return 0


if __name__ == "__main__":
    run_main(main)
