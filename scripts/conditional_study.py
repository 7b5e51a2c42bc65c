"""How well do class-conditional digits models draw the class they are asked for?

For each guidance scale w (diffusion) and for the conditional GAN, draws n_per_class samples of every
label 0..9 through a compiled artifact and reports how often the shipped digits classifier
(models/digits_classifier.py) agrees with the requested label, how confident it is, and the Fréchet distance
of the whole set to held-out digits (models/evaluate.py) as a check on diversity.

    python scripts/conditional_study.py --diffusion digits-cond.gencc --gan digits-cond-gan.gencc \
        --guidance 0,1,3 --n-per-class 50 --sampler em --steps 100 --json cond.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import gencc
from gencc.models.digits_classifier import probs
from gencc.models.evaluate import evaluate

LABELS = np.arange(10)


def score(samples: np.ndarray, labels: np.ndarray | None) -> dict:
    """Classifier agreement with the requested labels (overall and the worst class), confidence, Fréchet."""
    p = probs(samples)
    metrics = evaluate(samples, "digits")["metrics"]
    out = {"confident": float((p.max(axis=1) >= 0.9).mean()),
           "frechet": metrics["frechet_distance"]["value"], "frechet_floor": metrics["frechet_distance"]["floor"]}
    if labels is not None:
        hit = p.argmax(axis=1) == labels
        out["agreement"] = float(hit.mean())
        out["worst_class_agreement"] = float(min(hit[labels == k].mean() for k in LABELS))
    return out


def run_model(path: str, n_per_class: int, seed: int, label: bool, **sampling) -> dict:
    model = gencc.load(path)   # the tvm backend: the compiled artifact
    labels = np.repeat(LABELS, n_per_class)
    start = time.perf_counter()
    x = model.sample(len(labels), seed=seed, **({"label": labels} if label else {}), **sampling)
    seconds = time.perf_counter() - start
    return {**score(x, labels if label else None), "ms_per_sample": 1e3 * seconds / len(labels),
            "backend": model.backend}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffusion", help="conditional digits diffusion artifact")
    ap.add_argument("--gan", help="conditional digits GAN artifact")
    ap.add_argument("--guidance", default="0,1,3")
    ap.add_argument("--n-per-class", type=int, default=50)
    ap.add_argument("--sampler", default="em")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    if args.diffusion:
        sampling = {"steps": args.steps, "sampler": args.sampler, "batch_size": args.batch_size}
        rows.append({"model": "diffusion", "guidance": "none (null class)",
                     **run_model(args.diffusion, args.n_per_class, args.seed, False, **sampling)})
        for w in (float(v) for v in args.guidance.split(",")):
            rows.append({"model": "diffusion", "guidance": w,
                         **run_model(args.diffusion, args.n_per_class, args.seed, True, guidance=w, **sampling)})
            print(rows[-1], flush=True)
    if args.gan:
        rows.append({"model": "gan", "guidance": "-",
                     **run_model(args.gan, args.n_per_class, args.seed, True, batch_size=args.batch_size)})
    print("| model | guidance w | agreement | worst class | confident | Fréchet (floor) | ms/sample |")
    print("|:---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        agree = f"{r['agreement']:.3f}" if "agreement" in r else "-"
        worst = f"{r['worst_class_agreement']:.2f}" if "agreement" in r else "-"
        print(f"| {r['model']} | {r['guidance']} | {agree} | {worst} | {r['confident']:.3f} | "
              f"{r['frechet']:.1f} ({r['frechet_floor']:.1f}) | {r['ms_per_sample']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
