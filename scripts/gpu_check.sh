#!/usr/bin/env bash
# The CUDA check for a machine with an NVIDIA GPU (issue: compile + verify + parity + timing).
# Needs gencc installed there (with apache-tvm and a CUDA build of torch) and a trained checkpoint:
#   scripts/gpu_check.sh CHECKPOINT [OUT_DIR]
# It compiles for this GPU's arch, runs `gencc verify`, compares 50-step em trajectories of TVM-CUDA
# against torch on CUDA and on the CPU, and times a sampling run. Everything it prints goes to OUT_DIR/gpu_check.log.
set -euo pipefail
ckpt=${1:?usage: scripts/gpu_check.sh CHECKPOINT [OUT_DIR]}
out=${2:-out/gpu_check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
arch=sm_$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
echo "arch: $arch"
gencc compile "$ckpt" --target cuda --arch "$arch" --out "$out/model-cuda.gencc" --force
gencc verify "$out/model-cuda.gencc"
python3 - "$ckpt" "$out/model-cuda.gencc" <<'PY'
import sys, time
import numpy as np
import gencc
ckpt, art = sys.argv[1], sys.argv[2]
tvm = gencc.load(art, device="cuda")
ref_gpu = gencc.load(ckpt, device="cuda").sample(256, steps=50, sampler="em", seed=0)
ref_cpu = gencc.load(ckpt, device="cpu").sample(256, steps=50, sampler="em", seed=0)
x = tvm.sample(256, steps=50, sampler="em", seed=0)
print(f"trajectory parity (50 em steps, 256 samples): tvm-cuda vs torch-cuda {np.abs(x - ref_gpu).max():.2e}, "
      f"vs torch-cpu {np.abs(x - ref_cpu).max():.2e}")
for name, m in (("tvm-cuda", tvm), ("torch-cuda", gencc.load(ckpt, device="cuda"))):
    m.sample(64, steps=10, seed=1)   # warm-up
    t0 = time.perf_counter()
    m.sample(1024, steps=100, sampler="em", seed=2, batch_size=1024)
    print(f"{name}: 1024 samples x 100 em steps in {time.perf_counter() - t0:.3f} s")
PY
