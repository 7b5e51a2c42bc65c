#!/usr/bin/env python3
"""The sample-quality study behind docs/QUALITY.md: every sampler at a ladder of NFE budgets, plus the GAN.

    scripts/quality_study.py [--demo-dir out/demo] [--out docs] [--quick]      (or: make demo && make quality)

For each data set it samples the demo's diffusion model with every sampler at NFE 5 .. 1000 (the most
steps whose NFE does not exceed the budget; the actual NFE is recorded), scores each cell with
gencc.models.evaluate against held-out data beside its floor (real training data against the same
reference), times it, and writes the tables, plots, sample pictures and raw numbers under --out.
The hand-written part of QUALITY.md, outside the generated markers, is kept on a rerun.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gencc
from gencc.runtime.artifact import is_artifact
from gencc.runtime.atomic import atomic_path, write_bytes_atomic
from gencc.runtime.errors import GenccError
from gencc.runtime.samplers import SAMPLERS, nfe

NFE_LADDER = (5, 10, 20, 50, 100, 250, 1000)
QUICK_NFE = (5, 20)
SEED = 0
BEGIN, END = "<!-- BEGIN GENERATED: scripts/quality_study.py -->", "<!-- END GENERATED -->"
METRIC_NAMES = {"sliced_wasserstein": "sliced Wasserstein-1", "frechet_distance": "Fréchet distance"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str                       # built-in data set, as gencc.models.evaluate names it
    diffusion: Path                 # checkpoint or compiled artifact
    n: int                          # samples per cell
    metric: str                     # the headline metric (lower is better)
    backend: str | None = None      # for an artifact: None (tvm) or "ort"; checkpoints always use torch
    gan: Path | None = None         # sampled once, at its one NFE
    pictures: tuple[tuple[str, int], ...] = ()   # (sampler, NFE budget) cells drawn as PNGs; "gan" for the GAN


@dataclass(frozen=True)
class StudyConfig:
    datasets: tuple[DatasetSpec, ...]
    nfes: tuple[int, ...] = NFE_LADDER
    samplers: tuple[str, ...] = tuple(SAMPLERS)
    seed: int = SEED                # one seed for every cell: sample i starts from the same noise everywhere
    command: str = ""               # recorded in the report


@dataclass
class Cell:
    sampler: str
    target: int                     # the NFE budget
    nfe: int                        # what the run actually cost
    steps: int
    metrics: dict                   # evaluate()'s {name: {"value", "floor", "better"}}
    seconds_per_sample: float
    samples: np.ndarray | None = field(default=None, repr=False)   # kept only for picture cells


def steps_for_nfe(sampler: str, target: int) -> int | None:
    """The most steps whose NFE does not exceed `target`; None when even one step costs more."""
    steps = 0
    while nfe(sampler, steps + 1) <= target:
        steps += 1
    return steps or None


def demo_specs(demo_dir: Path, quick: bool = False) -> tuple[DatasetSpec, ...]:
    """The demo's three models; moons through TVM, the digits UNet through ONNX Runtime (see module doc)."""
    paths = {k: demo_dir / f"{k}.gencc" for k in ("moons-diffusion", "digits-diffusion", "digits-gan")}
    missing = [str(p) for p in paths.values() if not is_artifact(p)]
    if missing:
        raise GenccError(f"demo model(s) not found: {', '.join(missing)}; run `make demo` first "
                         f"(or pass --demo-dir to where it wrote its outputs)")
    return (DatasetSpec("moons", paths["moons-diffusion"], 200 if quick else 2000, "sliced_wasserstein",
                        pictures=(("em", 10), ("dpm2m", 10), ("em", 1000))),
            DatasetSpec("digits", paths["digits-diffusion"], 64 if quick else 500, "frechet_distance",
                        backend="ort", gan=paths["digits-gan"],
                        pictures=(("dpm2m", 10), ("em", 10), ("em", 1000), ("gan", 1))))


def load_model(path: Path, backend: str | None):
    """An artifact through `backend` (None: tvm), a checkpoint through torch."""
    return gencc.load(path, backend=backend if is_artifact(path) else None)


def run_cell(model, spec: DatasetSpec, sampler: str, target: int, seed: int) -> Cell:
    """Sample one (sampler, NFE) cell, time it, and score it; the GAN is sampler 'gan' at NFE 1."""
    from gencc.models.evaluate import evaluate

    steps = 1 if sampler == "gan" else steps_for_nfe(sampler, target)
    kwargs = {} if sampler == "gan" else {"steps": steps, "sampler": sampler}
    t0 = time.perf_counter()
    x = model.sample(spec.n, seed=seed, **kwargs)
    per_sample = (time.perf_counter() - t0) / spec.n
    metrics = evaluate(x, spec.name, seed=seed)["metrics"]
    keep = (sampler, target) in spec.pictures
    return Cell(sampler, target, 1 if sampler == "gan" else nfe(sampler, steps), steps, metrics, per_sample,
                x if keep else None)


def run_dataset(spec: DatasetSpec, cfg: StudyConfig, log=print) -> tuple[list[Cell], str]:
    """Every (sampler, budget) cell of one data set, then the GAN if it has one; and the diffusion backend."""
    jobs = [(spec.diffusion, s, t) for s in cfg.samplers for t in cfg.nfes if steps_for_nfe(s, t)]
    jobs += [(spec.gan, "gan", 1)] if spec.gan else []
    cells, models = [], {}
    for path, sampler, target in jobs:
        if path not in models:
            models[path] = load_model(path, spec.backend if path == spec.diffusion else None)
            models[path].sample(4, steps=2, seed=cfg.seed)   # warm-up: first-call costs stay out of the timing
        cell = run_cell(models[path], spec, sampler, target, cfg.seed)
        log(f"[{spec.name}] {sampler:>9} NFE {cell.nfe:>4}: {spec.metric} {cell.metrics[spec.metric]['value']:.4g} "
            f"(floor {cell.metrics[spec.metric]['floor']:.4g}), {1e3 * cell.seconds_per_sample:.3g} ms/sample")
        cells.append(cell)
    return cells, models[spec.diffusion].backend


def run_study(cfg: StudyConfig, log=print) -> dict:
    """All data sets; returns the JSON-ready results (cells without their samples) plus the picture samples."""
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results = {"command": cfg.command, "seed": cfg.seed, "nfes": list(cfg.nfes), "samplers": list(cfg.samplers),
               "machine": machine(), "date": datetime.date.today().isoformat(), "datasets": {}}
    pictures = {}
    for spec in cfg.datasets:
        cells, backend = run_dataset(spec, cfg, log)
        results["datasets"][spec.name] = {
            "model": str(spec.diffusion), "gan": str(spec.gan) if spec.gan else None, "backend": backend,
            "n": spec.n, "metric": spec.metric,
            "cells": [{k: v for k, v in vars(c).items() if k != "samples"} for c in cells]}
        pictures[spec.name] = {(c.sampler, c.target): c.samples for c in cells if c.samples is not None}
    results["runtime_s"] = time.perf_counter() - t0
    results["machine"]["load"] = [load0, os.getloadavg()[0]]
    return {"results": results, "pictures": pictures}


def machine() -> dict:
    """CPU model name and core count as lscpu reports them (os.cpu_count() where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {"cpu": info.get("Model name", "unknown").strip(), "cores": int(info.get("CPU(s)", os.cpu_count() or 0))}


# ---- tables ----------------------------------------------------------------------------------------

def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub table, first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def grid_rows(cells: list[dict], samplers: list[str], nfes: list[int], value) -> list[list[str]]:
    """One row per sampler, one column per budget; `value(cell)` is the text, with the actual NFE in
    brackets where the sampler could not spend the budget exactly."""
    by = {(c["sampler"], c["target"]): c for c in cells}
    rows = []
    for s in samplers:
        row = [s]
        for t in nfes:
            c = by.get((s, t))
            row.append("-" if c is None else value(c) + ("" if c["nfe"] == t else f" ({c['nfe']})"))
        rows.append(row)
    return rows


def dataset_section(name: str, d: dict, samplers: list[str], nfes: list[int]) -> str:
    metric = d["metric"]
    diff = [c for c in d["cells"] if c["sampler"] != "gan"]
    gan = next((c for c in d["cells"] if c["sampler"] == "gan"), None)
    floor = d["cells"][0]["metrics"][metric]["floor"]
    header = ["sampler \\ NFE"] + [str(t) for t in nfes]
    out = [f"### {name}", "",
           f"{d['n']} samples per cell from `{d['model']}` (backend `{d['backend']}`)"
           + (f"; GAN `{d['gan']}`" if d["gan"] else "") + ".", "",
           f"**{METRIC_NAMES.get(metric, metric)}** to held-out data (lower is better). "
           f"Floor (real training data vs the same held-out data, same n): **{floor:.4g}**.", "",
           markdown_table(header, grid_rows(diff, samplers, nfes, lambda c: f"{c['metrics'][metric]['value']:.4g}"))]
    if gan:
        out += ["", f"GAN (NFE 1): {metric} **{gan['metrics'][metric]['value']:.4g}**"
                + "".join(f", {k} {gan['metrics'][k]['value']:.3f}" for k in ("coverage_entropy", "confident_fraction")
                          if k in gan["metrics"]) + f", {1e3 * gan['seconds_per_sample']:.3g} ms/sample."]
    if "confident_fraction" in diff[0]["metrics"]:
        conf_floor = diff[0]["metrics"]["confident_fraction"]["floor"]
        out += ["", f"Confident fraction (classifier top probability >= 0.9; higher is better; held-out data: "
                f"{conf_floor:.3f}):", "",
                markdown_table(header, grid_rows(diff, samplers, nfes,
                                                 lambda c: f"{c['metrics']['confident_fraction']['value']:.3f}"))]
    out += ["", f"Wall time per sample (ms, sampling only, {d['backend']} backend):", "",
            markdown_table(header, grid_rows(diff, samplers, nfes, lambda c: f"{1e3 * c['seconds_per_sample']:.3g}")),
            "", f"![{name}: metric vs NFE](quality/{name}.png)"]
    return "\n".join(out)


def goal_lines(results: dict) -> list[str]:
    """The three goals of the study, checked on the numbers: PASS/FAIL with the values."""
    lines = [line for name, d in results["datasets"].items() for line in goal_a(name, d)]
    digits = results["datasets"].get("digits")
    return lines + (goal_b(digits) + goal_c(digits) if digits else [])


def _find(d: dict, sampler: str, target: int) -> dict | None:
    return next((c for c in d["cells"] if (c["sampler"], c["target"]) == (sampler, target)), None)


def _value(c: dict, metric: str) -> float:
    return c["metrics"][metric]["value"]


def goal_a(name: str, d: dict) -> list[str]:
    """(a) The best sampler at 20 NFE within 15% of em at 1000 NFE."""
    metric, ref = d["metric"], _find(d, "em", 1000)
    at20 = [c for c in d["cells"] if c["target"] == 20]
    if not (ref and at20):
        return []
    best = min(at20, key=lambda c: _value(c, metric))
    r = _value(best, metric) / _value(ref, metric)
    return [f"- (a) {name}: best at 20 NFE is {best['sampler']} ({_value(best, metric):.4g}), {r:.2f}x em at "
            f"1000 NFE ({_value(ref, metric):.4g}): {'PASS' if r <= 1.15 else 'FAIL'} (goal <= 1.15x)"]


def goal_b(d: dict) -> list[str]:
    """(b) Fréchet distance within 1.5x of its floor with >= 90% confident, judged at em@1000: a fixed cell,
    since the minimum over ~50 noisy cells would flatter the model; the best cell is shown beside it."""
    diff = [c for c in d["cells"] if c["sampler"] != "gan"]
    best = min(diff, key=lambda c: _value(c, "frechet_distance"))
    lines = []
    for label, c in (("em@1000", _find(d, "em", 1000)), (f"best cell, {best['sampler']}@{best['nfe']}", best)):
        if c is None:
            continue
        fd, conf = c["metrics"]["frechet_distance"], _value(c, "confident_fraction")
        ok = fd["value"] <= 1.5 * fd["floor"] and conf >= 0.9
        lines.append(f"- (b) digits, {label}: Fréchet distance {fd['value']:.4g} = {fd['value'] / fd['floor']:.2f}x "
                     f"floor {fd['floor']:.4g}, confident {conf:.3f}: {'PASS' if ok else 'FAIL'} "
                     "(goal <= 1.5x and >= 0.90)")
    return lines


def goal_c(d: dict) -> list[str]:
    """(c) GAN class coverage (normalised entropy of the predicted labels) >= 0.9."""
    gan = _find(d, "gan", 1)
    if gan is None:
        return []
    e = _value(gan, "coverage_entropy")
    return [f"- (c) digits GAN coverage entropy {e:.3f}: {'PASS' if e >= 0.9 else 'FAIL'} (goal >= 0.9)"]


def render_generated(results: dict, pics: dict | None = None) -> str:
    m = results["machine"]
    parts = [BEGIN, "", "## Results (generated)", "",
             f"This run: `{results['command']}`; the full study: `make demo && make quality`.  ",
             f"Machine: {m['cpu']}, {m['cores']} cores; date {results['date']}; the study took "
             f"{results['runtime_s']:.0f} s. Seed {results['seed']} for every cell." + load_note(m), "",
             "Each cell uses the most steps whose NFE does not exceed the column's budget; pc (one corrector "
             "step) and ode-heun spend 2 NFE per step plus the final denoising call, so at even budgets their "
             "actual NFE is in brackets."]
    if any(d["backend"] == "ort" for d in results["datasets"].values()):
        parts[-1] += (" Backend `ort` runs the artifact's ONNX graph with ONNX Runtime, used for the digits "
                      "UNet because the untuned TVM UNet is slower; the backends agree to ~1e-5.")
    for name, d in results["datasets"].items():
        parts += ["", dataset_section(name, d, results["samplers"], results["nfes"])]
    parts += ["", "### Goals", ""] + goal_lines(results)
    parts += ["", "Raw numbers: [quality/results.json](quality/results.json)."]
    if pics:
        parts += ["", pictures_markdown(pics)]
    return "\n".join(parts + ["", END])


def load_note(m: dict) -> str:
    if "load" not in m:
        return ""
    return (f" 1-minute load average {m['load'][0]:.1f} at the start, {m['load'][1]:.1f} at the end: times are "
            "wall-clock and only as steady as the machine was quiet.")


def merge_report(existing: str | None, generated: str) -> str:
    """Replace the generated block of an existing QUALITY.md, keeping everything around it."""
    if existing and BEGIN in existing and END in existing:
        head, rest = existing.split(BEGIN, 1)
        return head + generated + rest.split(END, 1)[1]
    return ("# Sample quality: samplers x NFE\n\n" + generated +
            "\n\n## Findings\n\n(hand-written after the run; kept when the study is rerun)\n")


# ---- pictures --------------------------------------------------------------------------------------

def plot_dataset(name: str, d: dict, path: Path) -> None:
    """Metric vs actual NFE on a log axis, one line per sampler, the floor dashed, the GAN a star at 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = d["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in dict.fromkeys(c["sampler"] for c in d["cells"] if c["sampler"] != "gan"):
        cs = sorted((c for c in d["cells"] if c["sampler"] == s), key=lambda c: c["nfe"])
        ax.plot([c["nfe"] for c in cs], [c["metrics"][metric]["value"] for c in cs], marker="o", ms=3, label=s)
    for c in (c for c in d["cells"] if c["sampler"] == "gan"):
        ax.plot([c["nfe"]], [c["metrics"][metric]["value"]], "k*", ms=12, label="GAN")
    ax.axhline(d["cells"][0]["metrics"][metric]["floor"], color="grey", ls="--", label="floor (real data)")
    ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations)",
           ylabel=f"{METRIC_NAMES.get(metric, metric)} (lower is better)", title=f"{name}: {d['n']} samples per point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def save_picture(name: str, samples: np.ndarray, path: Path) -> None:
    """A grid of the first 100 images, or the points over held-out data for 2-D sets."""
    from PIL import Image

    from gencc.models.data import load_dataset
    from gencc.runtime.render import image_grid, scatter

    if samples.ndim == 4:
        img = image_grid(samples)
    else:
        img = scatter(samples, load_dataset(name, split="test", n=len(samples), seed=SEED).data)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def write_report(study: dict, out: Path) -> Path:
    """quality/results.json, the picture cells, the plots and QUALITY.md, all written atomically."""
    results, pics = study["results"], study["pictures"]
    (out / "quality").mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "quality" / "results.json", json.dumps(results, indent=1).encode())
    for name, cells in pics.items():
        for (sampler, target), x in cells.items():
            save_picture(name, x, out / "quality" / f"{name}-{sampler}-nfe{target}.png")
    return write_docs(results, {name: list(cells) for name, cells in pics.items()}, out)


def write_docs(results: dict, pictures: dict, out: Path) -> Path:
    """The plots and QUALITY.md from the results; `pictures` maps each data set to its (sampler, budget) cells."""
    for name, d in results["datasets"].items():
        plot_dataset(name, d, out / "quality" / f"{name}.png")
    report = out / "QUALITY.md"
    merged = merge_report(report.read_text() if report.exists() else None, render_generated(results, pictures))
    write_bytes_atomic(report, merged.encode())
    return report


def rerender(out: Path) -> Path:
    """The plots and QUALITY.md again from OUT/quality/results.json, without sampling anything."""
    path = out / "quality" / "results.json"
    if not path.is_file():
        raise GenccError(f"{path} not found; --render-only needs the results of an earlier run of the study")
    results = json.loads(path.read_text())
    pictures = {}
    for name in results["datasets"]:
        found = (re.fullmatch(rf"{re.escape(name)}-(.+)-nfe(\d+)\.png", p.name) for p in (out / "quality").iterdir())
        pictures[name] = sorted((m[1], int(m[2])) for m in found if m)
    return write_docs(results, pictures, out)


def pictures_markdown(pics: dict) -> str:
    """Links to the picture cells, one line per data set (the NFE in the names is the budget)."""
    lines = ["### Samples", "",
             "First 100 samples of a few cells; moons points in blue over held-out data in grey.", ""]
    for name, cells in ((k, v) for k, v in pics.items() if v):
        lines += [f"**{name}**: " + " ".join(f"{s}@{t} ![{name} {s} NFE {t}](quality/{name}-{s}-nfe{t}.png)"
                                            for s, t in cells), ""]
    return "\n".join(lines).rstrip()


# ---- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", type=Path, default=Path("out/demo"), help="where `make demo` wrote its models")
    p.add_argument("--out", type=Path, default=Path("docs"), help="QUALITY.md goes here, pictures in OUT/quality/")
    p.add_argument("--quick", action="store_true", help=f"smoke run: NFE {QUICK_NFE}, few samples")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite QUALITY.md and the plots from OUT/quality/results.json; samples nothing")
    args = p.parse_args(argv)
    command = "python scripts/quality_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.render_only:
            print(f"wrote {rerender(args.out)}")
            return 0
        specs = demo_specs(args.demo_dir, args.quick)
        cfg = StudyConfig(specs, nfes=QUICK_NFE if args.quick else NFE_LADDER, command=command.strip())
        report = write_report(run_study(cfg, log=lambda s: print(s, flush=True)), args.out)
    except GenccError as e:
        print(f"quality_study: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
