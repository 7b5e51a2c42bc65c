#!/usr/bin/env python3
"""Make the tuning records shipped for the demo models (models/pretrained/tuning/NAME/).

    .venv/bin/python scripts/tune_demo.py [--demo-dir out/demo] [--trials 256] [--only moons-diffusion]

For each demo model in cli/demo.py's TUNED (name -> batch size), after `make demo` has trained it:
MetaSchedule tunes its fused step at that batch, starting from gencc's default schedules (compiler/tune.py),
and the best record of each kernel is kept (gzipped), stamped with this CPU. `make demo` then builds the tuned
library from these records with no trials; on another CPU it says so and keeps the default build.
Tuning runs every kernel on this machine: run it on a quiet one.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gencc.cli.demo import TUNED
from gencc.compiler.compile import compile_artifact
from gencc.compiler.tune import TuneOptions, pack_records, prune_database, shipped_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", type=Path, default=Path("out/demo"))
    p.add_argument("--trials", type=int, default=256, help="MetaSchedule trials per model")
    p.add_argument("--only", default=None, help="one demo model name")
    args = p.parse_args()
    work = args.demo_dir / "tuning-work"
    work.mkdir(parents=True, exist_ok=True)
    for name, batch in TUNED.items():
        if args.only and name != args.only:
            continue
        ckpt = args.demo_dir / f"{name}.ckpt"
        if not ckpt.exists():
            sys.exit(f"{ckpt} does not exist: run `make demo` first")
        db = work / name
        shutil.rmtree(db, ignore_errors=True)
        opts = TuneOptions(trials=args.trials, batches=(batch,), db_dir=db, keep="always")
        m = compile_artifact(ckpt, work / f"{name}.gencc", force=True, tuning=opts, log=print)
        v = m["functions"]["step"]["static"][str(batch)]
        kept = prune_database(db, work / f"{name}-pruned")
        pack_records(work / f"{name}-pruned", shipped_records(name))
        print(f"{name}: batch {batch}, {v['trials']} trials: {v['tuned_s'] * 1e6:.0f} us per step against "
              f"{v['default_s'] * 1e6:.0f} us for the default build; {kept} records -> {shipped_records(name)}")


if __name__ == "__main__":
    main()
