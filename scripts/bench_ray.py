"""Throughput of `gencc sample --ray` on a local 2-node Ray cluster against one plain process (docs/SCALING.md).

    .venv/bin/python scripts/bench_ray.py moons.gencc --n 20000 --steps 100

Prints a Markdown table: wall-clock samples/s of the whole command (Ray's start-up and the output included)
and the sampling actors' own rate while busy. Run it on a quiet machine for numbers worth quoting.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster import ENV, local_cluster

GENCC = Path(sys.executable).with_name("gencc")


def _run(args: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run([str(GENCC), "sample", *args], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        sys.exit(done.stderr)
    return time.perf_counter() - began, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default 1)")
    a = ap.parse_args()
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(a.threads)}
    job = [a.artifact, "--n", str(a.n), "--steps", str(a.steps), "--batch-size", str(a.batch_size)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = _run([*job, "--out", f"{tmp}/plain.npy"], env)
        rows.append(("one process, plain `gencc sample`", seconds, ""))
        with local_cluster(nodes=2) as address:
            for actors in (1, 2):
                seconds, said = _run([*job, "--out", f"{tmp}/ray{actors}.npy", "--ray-address", address,
                                      "--ray-actors", str(actors)], env)
                busy = [float(r) for r in re.findall(r"([\d.]+) samples/s while busy", said)]
                inner = float(re.search(r"([\d.]+) samples/s in all", said).group(1))
                rows.append((f"2-node cluster, {actors} actor(s)", seconds,
                             f"{inner:.0f} in the pipeline; per actor busy: {', '.join(f'{b:.0f}' for b in busy)}"))
                same = np.array_equal(np.load(f"{tmp}/ray{actors}.npy"), np.load(f"{tmp}/plain.npy"))
                assert same, "the Ray output differs from the plain run's"
    print(f"n={a.n}, steps={a.steps}, batch {a.batch_size}, OMP_NUM_THREADS={a.threads}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; every output bit-identical to the plain run's\n")
    print("| Run | Wall s | Samples/s (wall) | Samples/s inside |")
    print("|---|---:|---:|---|")
    for name, s, inner in rows:
        print(f"| {name} | {s:.1f} | {a.n / s:.0f} | {inner} |")


if __name__ == "__main__":
    main()
