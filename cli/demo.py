"""The main job: train three models on built-in data, compile them with TVM, and sample the artifacts."""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import typer

from gencc.runtime.defaults import DEFAULT_SAMPLER, DEFAULT_STEPS

# (name, model, dataset); each trains with its dataset's default budget.
JOBS = (("moons-diffusion", "diffusion", "moons"),
        ("digits-diffusion", "diffusion", "digits"),
        ("digits-gan", "gan", "digits"))
# Demo models whose tuning records ship with gencc (scripts/tune_demo.py): name -> the batch size tuned,
# the one `gencc bench` measures end to end.
TUNED = {"moons-diffusion": 1024, "digits-diffusion": 64}
SAMPLE_STEPS = DEFAULT_STEPS
SAMPLER = DEFAULT_SAMPLER
SUMMARY = "summary.md"
QUICK_STEPS = 30   # --quick: a smoke test of the whole pipeline, not a useful model


def run_demo(out: Path, quick: bool = False) -> dict:
    import gencc
    from gencc.api import save_npz, write_png
    from gencc.compiler.compile import compile_artifact
    from gencc.models.data import load_dataset
    from gencc.models.metrics import sliced_wasserstein

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {}
    for name, model, data in JOBS:
        ckpt, art = out / f"{name}.ckpt", out / f"{name}.gencc"
        dataset = load_dataset(data)
        result = _train_job(name, model, dataset, ckpt, quick)
        typer.echo(f"[{name}] compiling for this CPU with TVM ...")
        compile_artifact(ckpt, art, target="llvm", force=True, log=lambda s: typer.echo(f"  {s}"),
                         tuning=None if quick else _shipped_tuning(name, out))
        n = 2000 if dataset.kind == "vector" else 100
        steps = QUICK_STEPS if quick else SAMPLE_STEPS
        t0 = time.perf_counter()
        # The compiled artifact, run by TVM's runtime library; built just now, so no signature policy applies.
        m = gencc.load(art, require_signature=False)
        samples = m.sample(n, steps=steps, sampler=SAMPLER, seed=0)
        sample_s = time.perf_counter() - t0
        sampler, nfe = sampling_of(model, steps)
        save_npz(out / f"{name}.npz", samples=samples)
        write_png(out / f"{name}.png", samples, m.data_name, title=f"{name}: {model}, {sampler}, NFE {nfe}")
        summary[name] = {"model": model, "data": data, "steps": result.steps, "losses": result.losses,
                         "train_s": result.seconds, "sample_s": sample_s, "n": n, "sampler": sampler, "nfe": nfe}
        if data == "moons":
            held_out = load_dataset("moons", split="test", n=n).data
            summary[name]["sw"] = sliced_wasserstein(samples, held_out)
            summary[name]["sw_floor"] = sliced_wasserstein(dataset.data[:n], held_out)
    cuda = out / "digits-diffusion-cuda.gencc"
    if shutil.which("nvcc"):
        typer.echo("[digits-diffusion] cross-compiling for CUDA sm_90 ...")
        compile_artifact(out / "digits-diffusion.ckpt", cuda, target="cuda", arch="sm_90", force=True)
    _report(out, summary, cuda if cuda.exists() else None, time.perf_counter() - start)
    return summary


def sampling_of(model: str, steps: int) -> tuple[str, int]:
    """The demo's sampler and its network evaluations (NFE) for one model; a GAN's generator runs once."""
    from gencc.runtime.samplers import nfe

    return ("generator", 1) if model == "gan" else (SAMPLER, nfe(SAMPLER, steps))


def _train_job(name: str, model: str, dataset, ckpt: Path, quick: bool):
    """Train one demo model (a rerun resumes its checkpoint) under the progress bar `gencc train` shows."""
    from gencc.cli.commands import _progress_bar
    from gencc.models.train import default_config, train

    cfg = default_config(model, dataset.kind)
    if quick:
        cfg = replace(cfg, steps=QUICK_STEPS, ckpt_every=QUICK_STEPS)
    typer.echo(f"[{name}] training {cfg.steps} steps on {dataset.name}"
               + (" (resuming the checkpoint)" if ckpt.exists() else "") + " ...")
    with _progress_bar() as bar:
        task = bar.add_task("train", total=cfg.steps, model=name, losses="")

        def progress(step: int, total: int, losses: dict) -> None:
            if step % 20 == 0 or step == total:
                bar.update(task, completed=step, losses=" ".join(f"{k}={v:.4f}" for k, v in losses.items()))

        result = train(model, dataset, ckpt, cfg, resume=ckpt.exists(), progress=progress)
        bar.update(task, completed=result.steps)   # a finished checkpoint resumes without any step
    return result


def _shipped_tuning(name: str, out: Path):
    """Tuning from the records shipped for this demo model, with no new trials; None if there are none.
    The records are copied out first: a build adds any kernel they lack, and the package stays as shipped."""
    from gencc.compiler.tune import TuneOptions, shipped_records, unpack_records

    if name not in TUNED or not shipped_records(name).is_dir():
        return None
    db = out / "tuning" / name
    shutil.rmtree(db, ignore_errors=True)
    unpack_records(shipped_records(name), db)
    return TuneOptions(trials=0, batches=(TUNED[name],), db_dir=db)


def _report(out: Path, summary: dict, cuda: Path | None, seconds: float) -> None:
    from gencc.runtime.atomic import write_bytes_atomic

    typer.echo(f"\ngencc demo finished in {seconds:.0f} s. In {out}/:")
    for name, s in summary.items():
        losses = " ".join(f"{k}={v:.4f}" for k, v in s["losses"].items())
        typer.echo(f"  {name}: .ckpt/ .gencc/ .npz .png | final {losses} | trained in {s['train_s']:.0f} s, "
                   f"{s['n']} samples from the TVM artifact in {s['sample_s']:.1f} s")
        if "sw" in s:
            typer.echo(f"    sliced Wasserstein to held-out moons: {s['sw']:.4f} "
                       f"(train-vs-held-out floor {s['sw_floor']:.4f})")
    if cuda:
        typer.echo(f"  CUDA artifact (cross-compiled, unverified until `gencc verify` on a GPU): {cuda}")
    write_bytes_atomic(out / SUMMARY, summary_markdown(summary, cuda, seconds).encode())
    typer.echo(f"  summary: {out / SUMMARY}")


def summary_markdown(summary: dict, cuda: Path | None, seconds: float) -> str:
    """The demo's results as a Markdown page: one table row per model, pictures linked below it."""
    lines = ["# gencc demo", "",
             f"Trained, compiled with TVM for this CPU and sampled in {seconds:.0f} s.", "",
             "| Model | Data | Trained | Final losses | Train s | Samples | Sampler | NFE | Sample s | Quality |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        losses = ", ".join(f"{k} {v:.4f}" for k, v in s["losses"].items())
        quality = f"sliced W {s['sw']:.4f} (floor {s['sw_floor']:.4f})" if "sw" in s else ""
        lines.append(f"| {name} | {s['data']} | {s['steps']} steps | {losses} | {s['train_s']:.0f} | {s['n']} | "
                     f"{s['sampler']} | {s['nfe']} | {s['sample_s']:.1f} | {quality} |")
    lines += ["", "Files per model: `NAME.ckpt/` (checkpoint), `NAME.gencc/` (artifact), `NAME.npz` (samples), "
              "`NAME.png` (picture). The floor is the same metric between training and held-out data.", ""]
    if cuda:
        lines += [f"CUDA artifact (cross-compiled, unverified until `gencc verify` on a GPU): `{cuda.name}`", ""]
    lines += [f"![{name}]({name}.png)" for name in summary] + [""]
    return "\n".join(lines)
