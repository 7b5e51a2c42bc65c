"""The main job: train three models on built-in data, sample each, and write PNGs and samples."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer

from gencc.runtime.errors import GenccError

# (name, model, dataset, sampler steps); budgets are each dataset's training defaults.
JOBS = (("moons-diffusion", "diffusion", "moons", 200),
        ("digits-diffusion", "diffusion", "digits", 200),
        ("digits-gan", "gan", "digits", 0))
QUICK_STEPS = 60   # --quick: a smoke test of the whole pipeline, not a useful model


def run_demo(out: Path, quick: bool = False) -> dict:
    import gencc
    from gencc.cli.commands import save_npz, write_png
    from gencc.models.data import load_dataset
    from gencc.models.train import default_config, train

    if not out.parent.is_dir() and out.parent != Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    summary = {}
    for name, model, data, steps in JOBS:
        ckpt = out / f"{name}.ckpt"
        dataset = load_dataset(data)
        cfg = default_config(model, dataset.kind)
        if quick:
            cfg = replace(cfg, steps=QUICK_STEPS, ckpt_every=QUICK_STEPS)
        typer.echo(f"[{name}] training {cfg.steps} steps on {data} ...")
        resume = ckpt.exists()   # a rerun continues (or reuses) what an earlier run trained
        result = train(model, dataset, ckpt, cfg, resume=resume)
        n = 2000 if dataset.kind == "vector" else 100
        samples = gencc.load(ckpt).sample(n, steps=QUICK_STEPS // 3 if quick else steps, seed=0)
        save_npz(out / f"{name}.npz", samples=samples)
        write_png(out / f"{name}.png", samples, gencc.load(ckpt).info)
        summary[name] = {"losses": result.losses, "train_seconds": result.seconds}
        typer.echo(f"[{name}] done in {result.seconds:.0f} s; losses "
                   + " ".join(f"{k}={v:.4f}" for k, v in result.losses.items()))
    typer.echo(f"\ngencc demo finished in {time.perf_counter() - start:.0f} s. Files in {out}/:")
    for name, *_ in JOBS:
        typer.echo(f"  {name}.ckpt/  {name}.npz  {name}.png")
    return summary
