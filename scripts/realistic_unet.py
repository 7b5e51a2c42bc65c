"""A DDPM-CIFAR10-sized diffusers UNet2DModel (random weights), saved as a folder and benched (issue 15).

    .venv/bin/python scripts/realistic_unet.py --out /tmp/cifar_unet --md bench.md [--batch 1,8] [--steps 10]

The network is the one of Ho et al.'s CIFAR-10 model in diffusers' terms (google/ddpm-cifar10-32's
config): 3x32x32, block_out_channels (128, 256, 256, 256), 2 layers per block, attention at 16x16 (the
second down block and its mirror, one head: 256 tokens x 256 channels), about 35.7M parameters.
Weights are random (seed 0): speed does not depend on them, and nothing is downloaded. With --no-bench
the folder is only written, for `gencc bench FOLDER` or `gencc compile FOLDER`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PARAMS = 35.7e6   # the DDPM CIFAR-10 network's size (Ho et al. 2020: 35.7M)


def build_unet(padding: int = 1):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    # google/ddpm-cifar10-32's config: one attention head of all 256 channels (attention_head_dim None;
    # diffusers' default of 8 would make 32 heads of 8), DDPM's sinusoid convention. --ddpm-padding adds its
    # downsample_padding=0, an asymmetric F.pad that exports as a computed Pad.
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256), attention_head_dim=None,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       downsample_padding=padding, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)


def save(out: Path, padding: int = 1) -> int:
    """Write the folder (config.json + safetensors, no hub); returns the parameter count."""
    unet = build_unet(padding)
    n = sum(p.numel() for p in unet.parameters())
    if abs(n - PARAMS) > 0.01 * PARAMS:
        sys.exit(f"the network has {n / 1e6:.2f}M parameters, not about {PARAMS / 1e6:.1f}M")
    unet.save_pretrained(str(out), safe_serialization=True)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("cifar_unet"), help="the diffusers folder to write")
    ap.add_argument("--backends", default="torch,ort,tvm")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--steps", type=int, default=10, help="steps of the end-to-end run (0: per step only)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the backends (a busy machine)")
    ap.add_argument("--md", type=Path, help="the bench table as Markdown")
    ap.add_argument("--json", type=Path, help="the bench report as JSON")
    ap.add_argument("--no-bench", action="store_true", help="only write the folder")
    ap.add_argument("--ddpm-padding", action="store_true", help="downsample_padding=0 as in DDPM (same cost)")
    args = ap.parse_args()
    n = save(args.out, 0 if args.ddpm_padding else 1)
    print(f"{args.out}: UNet2DModel, {n / 1e6:.2f}M parameters", file=sys.stderr)
    if args.no_bench:
        return
    cmd = [sys.executable, "-m", "gencc.cli.main", "bench", str(args.out), "--backends", args.backends,
           "--batch", args.batch, "--steps", str(args.steps), "--rounds", str(args.rounds)]
    cmd += ["--md", str(args.md)] if args.md else []
    cmd += ["--json", str(args.json)] if args.json else []
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
