"""Training speed with 0, 1 and 2 competing busy processes, before and after the torch thread policy.

    .venv/bin/python scripts/load_study.py [--steps 100] [--repeats 2] [--out docs/_load_study.md]

Each measurement is a fresh process training the issue's 3-D model (moons plus a Gaussian third
coordinate, the default vector diffusion config) for --steps steps. "before" is torch's default of one
thread per core (the thread policy told that no other process runs); "after" is runtime/threads.py's
policy. Busy processes are `python -c 'while True: pass'`, started and killed here. The two modes
alternate, so background load from elsewhere falls on both; the table gives medians and the ratio.
A run past --timeout is killed and counted at the timeout (so its speed is an upper bound).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("before", "after")


def child(mode: str, steps: int) -> None:
    import dataclasses
    import tempfile

    import numpy as np

    from gencc.models.data import Dataset, make_2d
    from gencc.models.train import default_config, train
    from gencc.runtime import threads

    if mode == "before":
        threads.busy_elsewhere = lambda: 0   # the policy then keeps torch's default: every core
    import torch

    seen = []
    rng = np.random.default_rng(0)
    x = np.concatenate([make_2d("moons", 8192), rng.standard_normal((8192, 1)).astype(np.float32)], 1)
    cfg = dataclasses.replace(default_config("diffusion", "vector"), steps=steps, ckpt_every=10 ** 6)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        r = train("diffusion", Dataset(x, None, "moons3d", "vector"), Path(d) / "c", cfg,
                  progress=lambda s, n, losses: s == 1 and seen.append(torch.get_num_threads()))
        print(json.dumps({"seconds": time.perf_counter() - t, "threads": seen[0], "loss": r.losses["loss"]}))


def measure(mode: str, steps: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:   # the collapse itself: counted at the timeout
        return {"seconds": timeout, "threads": None, "loss": None, "timed_out": True}


def study(steps: int, repeats: int, timeout: float, busy_counts=(0, 1, 2)) -> list[dict]:
    rows = []
    for busy in busy_counts:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0)
            for r in range(repeats):
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):   # alternate who goes first
                    m = measure(mode, steps, timeout)
                    rows.append({"busy": busy, "mode": mode, "load": os.getloadavg()[0], **m})
                    print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    return rows


def table(rows: list[dict], steps: int) -> str:
    """Medians per cell; "<" marks a speed bounded by a timeout, and the ratio then becomes a bound too."""
    lines = ["| busy processes | load average | before: steps/s (threads) | after: steps/s (threads) "
             "| after / before | loss equal |", "|---|---|---|---|---|---|"]
    for busy in sorted({r["busy"] for r in rows}):
        cell, speed, bounded = {}, {}, {}
        for mode in MODES:
            rs = [r for r in rows if r["busy"] == busy and r["mode"] == mode]
            speed[mode] = statistics.median(steps / r["seconds"] for r in rs)
            ts = sorted({str(r["threads"]) for r in rs if r["threads"] is not None}) or ["?"]
            bounded[mode] = any(r.get("timed_out") for r in rs)
            cell[mode] = f"{'<' if bounded[mode] else ''}{speed[mode]:.1f} ({'/'.join(ts)})"
        ratio = speed["after"] / speed["before"]
        bounds = (bounded["before"], bounded["after"])
        sign = {(True, False): ">", (False, True): "<", (True, True): "~"}.get(bounds, "")
        losses = {r["loss"] for r in rows if r["busy"] == busy and r["loss"] is not None}
        load = statistics.median(r["load"] for r in rows if r["busy"] == busy)
        lines.append(f"| {busy} | {load:.1f} | {cell['before']} | {cell['after']} | {sign}{ratio:.1f}x "
                     f"| {'yes' if len(losses) == 1 else 'no' if losses else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.steps)
    rows = study(a.steps, a.repeats, a.timeout)
    md = (f"{a.steps} training steps, median of {a.repeats} runs per cell, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}.\n\n" + table(rows, a.steps))
    print(md)
    if a.out:
        a.out.write_text(md)
        a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
