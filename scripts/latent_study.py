#!/usr/bin/env python3
"""Latent against pixel-space diffusion on the built-in `shapes` set, at the same training budget and NFE:
the study behind the latent-diffusion section of docs/QUALITY.md.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/latent_study.py [--out out/latent-study]

Both diffusion networks get the same number of steps, batch size, learning rate and UNet width; the
latent model also pays for its autoencoder, whose training time is reported separately. Both are compiled
with TVM for this CPU and sampled through the artifacts with the same sampler and step count (one network
call per step, plus the decoder once per sample for latent). It reports the autoencoder's PSNR on held-out
images, the shapes scores of gencc eval (valid-shape share, shape coverage, Fréchet distance in the shapes
classifier's features, beside the real-data floor), sampling time per image and network FLOPs per step.
Checkpoints and artifacts under --out are reused on a rerun; results go to --out/latent_study.{json,md}.

Two more modes give the rows of docs/QUALITY.md's image table and its ablation table:

    # the default models, each through its compiled artifact with the default sampler, 2 seeds
    scripts/latent_study.py score --data shapes --seeds 0,1 --n 1000 --out out/q/score.json \
        latent=shapes-ld.gencc pixel=shapes-pixel.gencc gan=shapes-gan.gencc
    # an autoencoder's own floor: real training images through encoder and decoder, scored like samples
    scripts/latent_study.py ae-floor --n 1000 --out out/q/ae.json base=shapes-ld.ckpt resize=other.ckpt

Each row: valid share (shapes) or confident share (digits), coverage, Fréchet distance and its floor,
NFE, sampling ms per image (compiled artifact, one batch), and a 64-sample grid beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import gencc
from gencc.compiler.compile import compile_artifact
from gencc.compiler.flops import count_flops
from gencc.models.autoencoder import decode, encode_means
from gencc.models.data import load_dataset
from gencc.models.evaluate import evaluate
from gencc.models.latent import load_autoencoder, train_latent_diffusion
from gencc.models.train import TrainConfig, train
from gencc.runtime.normalize import Normalization
from gencc.runtime.samplers import nfe

SEED = 0


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/latent-study"))
    p.add_argument("--ae-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=1000, help="training steps of each diffusion network")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="UNet and autoencoder width")
    p.add_argument("--n", type=int, default=256, help="samples per model")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim")
    return p.parse_args()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train_models(a: argparse.Namespace, data, timings: dict) -> None:
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=2e-3, seed=SEED, ckpt_every=a.steps)
    ae_cfg = replace(cfg, steps=a.ae_steps, ckpt_every=a.ae_steps)
    if "latent" not in timings:
        results, _ = timed(lambda: train_latent_diffusion(data, a.out / "latent.ckpt", ae_cfg, cfg, width=a.width,
                                                         ae_width=a.width, resume=True))
        timings["autoencoder"] = results["autoencoder"].seconds if results["autoencoder"] else None
        timings["latent"] = results["latent"].seconds
    if "pixel" not in timings:
        timings["pixel"] = train("diffusion", data, a.out / "pixel.ckpt", cfg, width=a.width, resume=True).seconds


def ae_psnr(ckpt: Path) -> dict:
    """PSNR of autoencoder reconstructions of the 1000 test-split images, in [0, 1] pixel units."""
    model, config = load_autoencoder(ckpt)
    norm = Normalization.from_dict(config["data"]["normalization"])
    x = load_dataset("shapes", split="test").data
    recon = np.clip(norm.decode(decode(model.decoder, encode_means(model.encoder, norm.encode(x)))), 0, 1)
    mse = ((recon - x) ** 2).reshape(len(x), -1).mean(1)
    return {"psnr_mean_db": float(np.mean(10 * np.log10(1.0 / mse))),
            "psnr_of_mean_mse_db": float(10 * np.log10(1.0 / mse.mean())), "n": len(x)}


def sample_and_score(a: argparse.Namespace, name: str, art: Path) -> dict:
    model = gencc.load(art)
    model.sample(8, steps=2, sampler=a.sampler, seed=SEED)   # warm-up: first calls allocate
    x, seconds = timed(lambda: model.sample(a.n, steps=a.sample_steps, sampler=a.sampler, seed=SEED,
                                            batch_size=a.n))
    np.savez(a.out / f"{name}-samples.npz", samples=x)
    from gencc.runtime.render import save_png
    save_png(a.out / f"{name}-samples.png", x[:64])
    result = evaluate(x, "shapes", n_ref=1000, seed=SEED)
    step_flops = count_flops(art / "step.onnx", 1)
    dec_flops = count_flops(art / "decoder.onnx", 1) if (art / "decoder.onnx").is_file() else 0
    return {"ms_per_image": 1000 * seconds / a.n, "step_mflops": step_flops / 1e6, "decoder_mflops": dec_flops / 1e6,
            "metrics": result["metrics"], "labels": result["label_histogram"]}


def markdown(a: argparse.Namespace, r: dict) -> str:
    k = nfe(a.sampler, a.sample_steps)
    lines = [f"Shapes, {a.steps} training steps at batch {a.batch} for each diffusion UNet (width {a.width}), "
             f"{a.sampler} with {a.sample_steps} steps (NFE {k}), {a.n} samples each, sampled in one batch through "
             f"the TVM artifacts (untuned) on this 2-core CPU. Autoencoder: {a.ae_steps} steps; "
             "reconstruction PSNR on the 1000 test images "
             f"{r['psnr']['psnr_mean_db']:.1f} dB (mean over images).", "",
             "| | latent (4x8x8) | pixel (3x32x32) | real data (floor) |", "| --- | --- | --- | --- |"]
    lat, pix = r["latent"], r["pixel"]
    for key, label in (("valid_shape_fraction", "valid-shape share (higher is better)"),
                       ("shape_coverage", "shape coverage (higher is better)"),
                       ("frechet_distance", "Fréchet distance, shapes classifier (lower is better)")):
        lines.append(f"| {label} | {lat['metrics'][key]['value']:.3g} | {pix['metrics'][key]['value']:.3g} | "
                     f"{lat['metrics'][key]['floor']:.3g} |")
    t = r["train_seconds"]
    ae_t = f" + {t['autoencoder']:.0f} s autoencoder" if t.get("autoencoder") else ""
    lines += [f"| sampling time per image | {lat['ms_per_image']:.2f} ms | {pix['ms_per_image']:.2f} ms | |",
              f"| network FLOPs per step (one image) | {lat['step_mflops']:.1f} M "
              f"(+ decoder {lat['decoder_mflops']:.1f} M "
              f"once) | {pix['step_mflops']:.1f} M | |",
              f"| training time | {t['latent']:.0f} s{ae_t} | {t['pixel']:.0f} s | |"]
    return "\n".join(lines) + "\n"


def score_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="score compiled artifacts with their default sampler")
    p.add_argument("models", nargs="+", help="NAME=ARTIFACT")
    p.add_argument("--data", default="shapes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sampler", default=None, help="default: the runtime's default sampler")
    p.add_argument("--steps", type=int, default=None, help="default: the runtime's default steps")
    p.add_argument("--out", type=Path, required=True, help="JSON file; grids go beside it")
    a = p.parse_args(argv)
    from gencc.runtime.defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
    from gencc.runtime.render import save_png
    rows = json.loads(a.out.read_text()) if a.out.is_file() else {}
    for spec in a.models:
        name, art = spec.split("=", 1)
        model = gencc.load(art)
        diffusion = model.kind.value != "gan"
        kw = {"steps": a.steps or DEFAULT_STEPS, "sampler": a.sampler or DEFAULT_SAMPLER} if diffusion else {}
        model.sample(8, seed=0, **({**kw, "steps": 2} if diffusion else {}))   # warm-up: first calls allocate
        for seed in (int(s) for s in a.seeds.split(",")):
            start = time.perf_counter()
            x = model.sample(a.n, seed=seed, batch_size=a.n, **kw)
            seconds = time.perf_counter() - start
            if seed == 0:
                save_png(a.out.with_name(f"{a.out.stem}-{name}.png"), x[:64])
            r = evaluate(x, a.data, n_ref=1000 if a.data == "shapes" else None, seed=0)
            rows[f"{name}/seed{seed}"] = {"artifact": str(art), "seed": seed, "n": a.n, **kw,
                                          "nfe": nfe(kw["sampler"], kw["steps"]) if diffusion else 1,
                                          "ms_per_image": 1000 * seconds / a.n, "metrics": _values(r)}
            print(name, seed, json.dumps(rows[f"{name}/seed{seed}"]), flush=True)
            a.out.write_text(json.dumps(rows, indent=2) + "\n")
        if model.kind.value == "latent-diffusion":
            rows[f"{name}/latent_spread"] = latent_spread(model, kw)
            a.out.write_text(json.dumps(rows, indent=2) + "\n")


def latent_spread(model, kw: dict, n: int = 256) -> dict:
    """Per-channel std of the sampler's final latents against the training latents' (both scaled): a
    spread far from the real latents' (ae-floor mode) means the latent network, not the decoder, is off."""
    last = {}
    model.sample(n, seed=0, batch_size=n, callback=lambda k, x: last.update(x=np.asarray(x)), **kw)
    return {"sampled_std_per_channel": last["x"].std(axis=(0, 2, 3)).round(3).tolist(),
            "sampled_abs_max": float(np.abs(last["x"]).max())}


def _values(result: dict) -> dict:
    return {k: {"value": round(v["value"], 5), "floor": round(v["floor"], 5)} for k, v in result["metrics"].items()}


def ae_floor_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="an autoencoder's reconstructions of real images, scored like samples")
    p.add_argument("models", nargs="+", help="NAME=CHECKPOINT (an autoencoder or a latent-diffusion checkpoint)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    from gencc.runtime.render import save_png
    rows = json.loads(a.out.read_text()) if a.out.is_file() else {}
    x = load_dataset("shapes", seed=SEED).data[:a.n]   # the floor's own training images
    for spec in a.models:
        name, path = spec.split("=", 1)
        model, config = load_autoencoder(path)
        norm = Normalization.from_dict(config["data"]["normalization"])
        z = encode_means(model.encoder, norm.encode(x))
        recon = np.clip(norm.decode(decode(model.decoder, z)), 0, 1)
        save_png(a.out.with_name(f"{a.out.stem}-{name}.png"), recon[:64])
        mse = ((recon - x) ** 2).reshape(len(x), -1).mean(1)
        rows[name] = {"checkpoint": str(path), "net": config["net"], "ae_steps": config["step"],
                      "psnr_db": float(np.mean(10 * np.log10(1.0 / mse))), "latent_scale": config["latent"]["scale"],
                      "scaled_latent_std_per_channel": (z * config["latent"]["scale"]).std(axis=(0, 2, 3)).round(3)
                      .tolist(), "scaled_latent_abs_max": float(np.abs(z).max() * config["latent"]["scale"]),
                      "metrics": _values(evaluate(recon, "shapes", n_ref=1000, seed=SEED))}
        print(name, json.dumps(rows[name]), flush=True)
        a.out.write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    import sys
    modes = {"score": score_main, "ae-floor": ae_floor_main}
    if len(sys.argv) > 1 and sys.argv[1] in modes:
        return modes[sys.argv[1]](sys.argv[2:])
    a = parse()
    a.out.mkdir(parents=True, exist_ok=True)
    timings_file = a.out / "train_seconds.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    data = load_dataset("shapes", seed=SEED)
    train_models(a, data, timings)
    timings_file.write_text(json.dumps(timings) + "\n")
    r = {"args": {k: str(v) for k, v in vars(a).items()}, "train_seconds": timings,
         "psnr": ae_psnr(a.out / "latent.ckpt")}
    for name, ckpt in (("latent", a.out / "latent.ckpt"), ("pixel", a.out / "pixel.ckpt")):
        art = a.out / f"{name}.gencc"
        if not art.is_dir():
            compile_artifact(ckpt, art, target="llvm")
        r[name] = sample_and_score(a, name, art)
    (a.out / "latent_study.json").write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(a, r)
    (a.out / "latent_study.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
