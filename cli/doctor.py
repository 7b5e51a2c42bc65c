"""`gencc doctor`: what this machine offers gencc (versions, CPU, GPU, CUDA, TVM), never crashing on what is missing.

Every probe returns a value or the reason it could not; native libraries (TVM) are loaded in a child
process with a timeout, so a library that crashes on load is reported, not fatal. The CPU path is
usable when TVM's runtime library loads and runs on the CPU: that is what sampling an artifact needs.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata

PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "apache-tvm", "apache-tvm-ffi",
            "safetensors", "pillow", "typer")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "asimd", "sve")   # what LLVM's x86/arm code generators can use
PROBE_SECONDS = 60

# Runs in a child: loads libtvm_runtime.so the way the tvm backend does (runtime/backend_tvm.py).
_TVM_RUNTIME = """
import json, os
os.environ["TVM_USE_RUNTIME_LIB"] = "1"
os.environ["TVM_FFI_DISABLE_TORCH_C_DLPACK"] = "1"
import tvm, numpy as np
x = tvm.runtime.tensor(np.arange(4, dtype="float32"), device=tvm.cpu(0))
print(json.dumps({"version": tvm.__version__, "cpu_roundtrip": bool((x.numpy() == np.arange(4)).all()),
                  "cuda_device": bool(tvm.cuda(0).exist)}))
"""
# Runs in a child: the compiler library, and the CPU name LLVM targets with `--target llvm`.
_TVM_COMPILER = """
import json, tvm
print(json.dumps({"llvm_mcpu": tvm.target.codegen.llvm_get_system_cpu(), "llvm": bool(tvm.runtime.enabled("llvm")),
                  "cuda_codegen": tvm.get_global_func("target.build.cuda", allow_missing=True) is not None}))
"""


def collect() -> dict:
    """The whole report, as plain JSON-able data."""
    from concurrent.futures import ThreadPoolExecutor

    import gencc

    with ThreadPoolExecutor(2) as pool:   # the two TVM children load in parallel: each takes seconds
        runtime_job, compiler_job = pool.submit(_child_json, _TVM_RUNTIME), pool.submit(_child_json, _TVM_COMPILER)
        torch = torch_cuda()
    runtime = runtime_job.result()
    report = {
        "gencc": gencc.__version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cpu": cpu_info(),
        "gpu": {"nvidia_smi": nvidia_smi(), "torch_cuda": torch},
        "nvcc": nvcc(),
        "tvm_runtime": runtime,
        "tvm_compiler": compiler_job.result(),
    }
    report["cuda_usable"] = bool(runtime.get("cuda_device") or report["gpu"]["torch_cuda"].get("available"))
    report["cpu_path_usable"] = bool(runtime.get("cpu_roundtrip"))
    return report


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "machine": platform.machine(),
            "logical_cores": os.cpu_count(), "usable_cores": _usable_cores(), "isa": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:   # not Linux: the flags stay unknown
        return info
    model = re.search(r"^(model name|Hardware|Processor)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
    if model:
        info["model"] = model.group(2).strip()
    have = set(flags.group(2).split()) if flags else set()
    info["isa"] = [f for f in ISA_FLAGS if f in have]
    return info


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"found": False}
    out = _run([exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    if "error" in out:
        return {"found": True, **out}
    gpus = [dict(zip(("name", "driver", "memory", "compute_capability"), (c.strip() for c in line.split(",")),
                     strict=False))
            for line in out["stdout"].splitlines() if line.strip()]
    return {"found": True, "gpus": gpus}


def torch_cuda() -> dict:
    try:
        import torch
    except Exception as e:   # missing, or broken in any of many ways: report it
        return {"available": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    if not torch.cuda.is_available():
        return {"available": False, "built_with_cuda": torch.version.cuda}
    return {"available": True, "built_with_cuda": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}


def nvcc() -> dict:
    exe = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)
    if exe is None:
        return {"found": False}
    out = _run([exe, "--version"])
    release = re.search(r"release ([\d.]+)", out.get("stdout", ""))
    return {"found": True, "path": exe, "version": release.group(1) if release else None,
            **({"error": out["error"]} if "error" in out else {})}


def _run(cmd: list[str]) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout or f"exit status {p.returncode}").strip().splitlines()[-1]}
    return {"stdout": p.stdout}


def _child_json(code: str) -> dict:
    import json

    out = _run([sys.executable, "-c", code])
    if "error" in out:
        return {"ok": False, "error": out["error"]}
    try:
        return {"ok": True, **json.loads(out["stdout"].strip().splitlines()[-1])}
    except (ValueError, IndexError):
        return {"ok": False, "error": f"unexpected output: {out['stdout'][:200]!r}"}


def format_text(r: dict) -> str:
    """The report for people: one line per finding."""
    missing = "not installed"
    pk = r["packages"]
    cpu, smi, tc, nv = r["cpu"], r["gpu"]["nvidia_smi"], r["gpu"]["torch_cuda"], r["nvcc"]
    rt, comp = r["tvm_runtime"], r["tvm_compiler"]
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory')}, "
                     f"sm {g.get('compute_capability')})" for g in smi.get("gpus", [])) \
        or ("nvidia-smi: " + smi["error"] if "error" in smi else "none found")
    lines = [
        f"gencc        {r['gencc']}  (python {r['python']['version']}, {r['python']['executable']})",
        "packages     " + ", ".join(f"{p} {pk[p] or missing}" for p in PACKAGES if pk[p] or p != "onnxruntime-gpu"),
        f"cpu          {cpu['model']} ({cpu['machine']}), {cpu['usable_cores']} of {cpu['logical_cores']} cores usable",
        f"cpu isa      {' '.join(cpu['isa']) or 'unknown'}",
        f"gpu          {gpus}" if smi["found"] else "gpu          nvidia-smi not found",
        "torch cuda   " + (", ".join(tc["devices"]) if tc["available"] else
                           tc.get("error") or ("not available" + (f" (torch built with CUDA {tc['built_with_cuda']})"
                                                         if tc.get("built_with_cuda") else ": a CPU-only torch"))),
        f"nvcc         {nv.get('version')} at {nv['path']}" if nv["found"] else "nvcc         not found "
        "(needed only to compile for --target cuda)",
        "tvm runtime  " + (f"libtvm_runtime.so loads (tvm {rt['version']}), CPU tensors work" if rt.get("cpu_roundtrip")
                           else f"FAILED: {rt.get('error', 'CPU round trip wrong')}"),
        "tvm compiler " + (f"loads; llvm mcpu {comp['llvm_mcpu']}, "
                           f"cuda codegen {'on' if comp['cuda_codegen'] else 'off'}" if comp.get("ok")
                           else f"FAILED: {comp.get('error')}"),
        f"cuda usable  {'yes' if r['cuda_usable'] else 'no'}",
        f"cpu path     {'usable' if r['cpu_path_usable'] else 'NOT usable: gencc cannot sample artifacts here'}",
    ]
    return "\n".join(lines)
