"""TVM backend: an artifact's compiled libraries, run by TVM's runtime library alone.

`import tvm` happens here, lazily, with TVM_USE_RUNTIME_LIB=1 so only libtvm_runtime.so (3 MB) is
loaded instead of the 260 MB compiler. The sampler state stays a TVM tensor on the device between
steps; only the per-step scalars and the bulk-generated noise cross from the host.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np

from .artifact import read_manifest
from .errors import GenccError
from .model import Model


def import_tvm_runtime():
    """Import tvm as a runtime only, without letting tvm_ffi pull in torch (it tries, if installed)."""
    if "tvm" in sys.modules:   # already imported (e.g. by the compiler in this process): reuse it
        return sys.modules["tvm"]
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    # TVM halves the core count on x86 (assuming hyper-threads): one thread on a 2-core VM, and ~40 us
    # more per call at batch 1. Use every core unless the user said otherwise.
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None   # makes `import torch` inside tvm_ffi raise ImportError, which it handles
    try:
        import tvm
    except ImportError as e:
        raise GenccError(f"the tvm backend needs apache-tvm: {e}") from None
    finally:
        if hide_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def device_for(tvm, target: dict, device: str | None):
    kind = target["kind"]
    wanted = device or ("cuda" if kind == "cuda" else "cpu")
    if (kind == "cuda") != wanted.startswith("cuda"):
        raise GenccError(f"the artifact is compiled for {kind}; it cannot run on device {wanted!r}")
    if kind == "cuda":
        dev = tvm.cuda(int(wanted.partition(":")[2] or 0))
        if not dev.exist:
            raise GenccError(f"the artifact is compiled for CUDA ({target.get('arch')}) and this machine has no "
                             "usable CUDA device; compile it with --target llvm to run here")
        return dev
    return tvm.cpu(0)


def load_artifact(path: str | Path, device: str | None = None) -> Model:
    m = read_manifest(path)   # checks the manifest and every file's sha256 before any library is loaded
    tvm = import_tvm_runtime()
    dev = device_for(tvm, m.target, device)
    from tvm.runtime.vm import VirtualMachine

    # A VirtualMachine keeps its registers in the object: two threads calling it at once crash the
    # process. One lock per loaded model serialises the calls (TVM's own thread pool still uses every core).
    lock = threading.RLock()   # re-entrant: step_fn holds it around filling its buffers and the call

    def library(file: str):
        if file not in m.files:   # every library must be one the manifest lists, and so was hash-checked
            raise GenccError(f"{m.root}: library {file!r} is not listed in the manifest")
        try:
            main = VirtualMachine(tvm.runtime.load_module(str(m.root / file)), dev)["main"]
        except Exception as e:   # a TVM error while loading native code: report, don't crash
            raise GenccError(f"{m.root}: cannot load {file}: {str(e).splitlines()[0]}") from None

        def locked(*args):
            with lock:
                return main(*args)
        return locked

    def function(name: str):
        """The dynamic-batch library, or a tuned static-batch one when the call's batch has one."""
        dynamic = library(m.functions[name]["library"])
        static = {int(b): library(v["library"]) for b, v in m.functions[name].get("static", {}).items()}
        if not static:
            return dynamic
        return lambda *args: static.get(args[0].shape[0], dynamic)(*args)

    def to_device(a: np.ndarray):
        return tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32), device=dev)

    def to_numpy(a) -> np.ndarray:
        return a.numpy() if hasattr(a, "numpy") else np.asarray(a)

    if m.model == "gan":
        generator = function("generator")
        return Model.from_manifest(m, "tvm", generate_fn=lambda z: generator(to_device(z)),
                                   to_device=to_device, to_numpy=to_numpy)

    step, eps = function("step"), function("eps")
    zeros: dict[tuple, object] = {}

    def zeros_like(x):
        shape = tuple(x.shape)
        if shape not in zeros:
            zeros[shape] = to_device(np.zeros(shape, np.float32))
        return zeros[shape]

    # t and the five coefficients change every step: refill two preallocated device buffers rather
    # than allocate two tensors per call (at batch 1 the allocations cost as much as the network).
    t_buf, coef_buf = to_device(np.zeros(1, np.float32)), to_device(np.zeros(5, np.float32))

    def step_fn(x, t, coef, z=None, x_prev=None, e_prev=None):
        zero = zeros_like(x)   # inputs whose coefficient is 0 still need a finite tensor
        with lock:             # the buffers are shared by every caller of this model
            t_buf.copyfrom(np.array([t], np.float32))
            coef_buf.copyfrom(np.asarray(coef, np.float32))
            out = step(x, t_buf, coef_buf, *(zero if v is None else v for v in (z, x_prev, e_prev)))
        return out[0], out[1]

    def eps_fn(x: np.ndarray, t: float) -> np.ndarray:
        return eps(to_device(x), to_device(np.full((len(x),), t, np.float32))).numpy()

    extra = {}
    if m.model == "latent-diffusion":
        decoder = function("decoder")
        extra["decode_fn"] = lambda z: to_numpy(decoder(to_device(z)))
    # A NaN check copies the state to the host; every 10 steps is cheap and still names where it began.
    return Model.from_manifest(m, "tvm", eps_fn=eps_fn, step_fn=step_fn, to_device=to_device,
                               to_numpy=to_numpy, check_every=10, **extra)
