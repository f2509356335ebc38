"""Table: one cross-validated run spread over a two-node Ray cluster started on this machine.

    python benchmarks/ray_two_nodes.py runs/emodb.npz --run runs/emodb_ray --epochs 20 --json ray_two_nodes.json

Starts a Ray head and a second Ray node as separate processes on 127.0.0.1 (`ray start`, one CPU
each), runs `timnet train --backend ray --address 127.0.0.1:PORT`, prints which node trained
which fold, and stops both nodes. Ray 2.59+ clusters use token authentication: the nodes and
timnet get RAY_AUTH_MODE=token and share the token in ~/.ray/auth_token (made if missing).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import pm, run_main, write_json


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", help="a timnet .npz from `timnet extract`")
    p.add_argument("--run", required=True, help="RUN_DIR of the run (replaced)")
    p.add_argument("--json", required=True, help="where to write the table's figures")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fold (default 20)")
    p.add_argument("--port", type=int, default=6391, help="the head's port (default 6391)")
    args = p.parse_args()

    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    token = Path.home() / ".ray" / "auth_token"
    if not token.exists() and "RAY_AUTH_TOKEN" not in env:
        subprocess.run([ray_cli(), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    shutil.rmtree(args.run, ignore_errors=True)  # a fresh run: a finished one would only be kept
    address = f"127.0.0.1:{args.port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli(), "start", "--head", "--port", str(args.port), "--include-dashboard", "false", *common],
                       env=env, check=True, capture_output=True)
        subprocess.run([ray_cli(), "start", "--address", address, *common], env=env, check=True, capture_output=True)
        time.sleep(3)
        t0 = time.time()
        cmd = [str(Path(sys.executable).with_name("timnet")), "train", args.features, "-o", args.run,
               "--epochs", str(args.epochs), "--backend", "ray", "--address", address, "--no-report", "-q",
               "--json", args.run + ".json"]
        print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return 1
        wall = time.time() - t0
    finally:
        subprocess.run([ray_cli(), "stop"], env=env, capture_output=True)
    r = json.loads(Path(args.run + ".json").read_text())
    nodes = sorted({f["worker"]["node_id"] for f in r["folds"]})
    print(f"### {r['corpus']}: {r['folds_n']} folds x {args.epochs} epochs on a two-node Ray cluster "
          f"(head and node on 127.0.0.1, one CPU each)\n")
    print("| fold | node | pid | seconds | WAR | UAR |")
    print("|---:|---|---:|---:|---:|---:|")
    for f in r["folds"]:
        node = f"node {nodes.index(f['worker']['node_id']) + 1} ({f['worker']['node_id'][:8]})"
        print(f"| {f['fold']} | {node} | {f['worker']['pid']} | {f['seconds']:.0f} | {f['war']:.4f} | {f['uar']:.4f} |")
    print(f"| **mean ± std** | | | | **{pm(r['mean_war'], r['std_war'])}** | **{pm(r['mean_uar'], r['std_uar'])}** |")
    print(f"\nwall time of `timnet train`: {wall:.0f} s; folds per node: "
          + ", ".join(f"node {i + 1}: {sum(f['worker']['node_id'] == n for f in r['folds'])}" for i, n in enumerate(nodes)))
    write_json(args.json, {"corpus": r["corpus"], "epochs": args.epochs, "address": address, "wall_s": round(wall, 1),
                           "nodes": nodes, "folds": [{k: f[k] for k in ("fold", "war", "uar", "seconds", "worker")}
                                                     for f in r["folds"]],
                           "mean_war": r["mean_war"], "mean_uar": r["mean_uar"]})
    return 0


if __name__ == "__main__":
    run_main(main)
