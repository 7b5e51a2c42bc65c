"""TVM backend: an artifact's compiled libraries, run by TVM's runtime library alone.

`import tvm` happens here, lazily, with TVM_USE_RUNTIME_LIB=1 so only libtvm_runtime.so (3 MB) is
loaded instead of the 260 MB compiler; the process environment is left as it was. The sampler state
stays a TVM tensor on the device between steps; only the per-step scalars and the bulk-generated noise
cross from the host.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import numpy as np

from . import threads
from .artifact import read_manifest
from .backend import Functions
from .conditioning import null_labels
from .contract import BATCH, chain_length as manifest_chain_length, check_loaded
from .device_noise import DeviceNoise, host_chain_block, host_steps
from .errors import GenccError
from .kinds import Kind
from .model import Model


def import_tvm_runtime():
    """Import tvm as a runtime only, without letting tvm_ffi pull in torch (it tries, if installed)."""
    if "tvm" in sys.modules:   # already imported (e.g. by the compiler in this process): reuse it
        return sys.modules["tvm"]
    # tvm_ffi's __init__ imports torch unconditionally when it can (seconds, and hundreds of MB), and no
    # switch turns that off: a None entry in sys.modules is Python's own way to make that one import
    # raise ImportError, which tvm_ffi handles. Only an absent torch is hidden, and only during the import.
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None   # type: ignore[assignment]
    try:
        with _import_environment():
            import tvm
    except ImportError as e:
        raise GenccError(f"the tvm backend needs apache-tvm: {e}") from None
    finally:
        if hide_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


@contextlib.contextmanager
def _import_environment():
    """TVM_USE_RUNTIME_LIB=1 loads only libtvm_runtime.so (3 MB) instead of the 260 MB compiler, and
    TVM_FFI_DISABLE_TORCH_C_DLPACK=1 skips tvm_ffi's torch extension. tvm and tvm_ffi read both from the
    environment while they are imported, and nowhere else, and offer no other switch: so they are set for
    the import only (a user's own values win), and the environment is as it was afterwards."""
    wanted = {"TVM_USE_RUNTIME_LIB": "1", "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1"}
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


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
    on_cpu = m.target["kind"] == "llvm"
    policy = threads.TvmThreads.from_environ()   # this model's: decided now, whatever was imported when
    if on_cpu:
        policy.prepare(tvm)   # before the checks below run the first parallel call on this thread
    from tvm.runtime.vm import VirtualMachine

    # A VirtualMachine keeps its registers in the object: two threads calling it at once crash the
    # process. One lock per loaded model serialises the calls (TVM's own thread pool still uses every core).
    lock = threading.RLock()   # re-entrant: step_fn holds it around filling its buffers and the call

    def library(name: str, file: str, batch: int = 1):
        """Function `name`'s library `file`, checked against the manifest by a call at `batch`."""
        if file not in m.files:   # every library must be one the manifest lists, and so was hash-checked
            raise GenccError(f"{m.root}: library {file!r} is not listed in the manifest")
        try:
            vm = VirtualMachine(tvm.runtime.load_module(str(m.root / file)), dev)
            main = vm["main"]
        except Exception as e:   # a TVM error while loading native code: report, don't crash
            raise GenccError(f"{m.root}: cannot load {file}: {str(e).splitlines()[0]}") from None
        _check_library(tvm, vm, m, name, file, batch, dev)

        def locked(*args):
            with lock:
                return main(*args)
        return locked

    def function(name: str):
        """The dynamic-batch library, or a tuned static-batch one when the call's batch has one; on a
        CPU, small calls run on one thread (runtime/threads.py)."""
        dynamic = library(name, m.functions[name]["library"])
        static = {int(b): library(name, v["library"], int(b)) for b, v in m.functions[name].get("static", {}).items()}
        flops = m.functions[name].get("flops_per_sample")
        if not on_cpu:
            return lambda *args: static.get(args[0].shape[0], dynamic)(*args)

        def call(*args):
            batch = args[0].shape[0]
            if flops is None:   # an artifact older than the count: every core, on any calling thread
                policy.prepare(tvm)
            else:
                policy.for_call(tvm, flops * batch)
            return static.get(batch, dynamic)(*args)
        return call

    def to_device(a: np.ndarray):
        return tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32), device=dev)

    def to_numpy(a) -> np.ndarray:
        return a.numpy() if hasattr(a, "numpy") else np.asarray(a)

    if m.model == Kind.GAN:
        generator = function("generator")
        return Model.from_manifest(m, Functions(
            "tvm", generate_fn=lambda z, *y: generator(to_device(z), *map(to_device, y)),
            to_device_fn=to_device, to_numpy_fn=to_numpy))

    step, eps = function("step"), function("eps")
    zeros: dict[tuple, object] = {}

    def zeros_like(x):
        shape = tuple(x.shape)
        if shape not in zeros:
            zeros[shape] = to_device(np.zeros(shape, np.float32))
        return zeros[shape]

    # t and the coefficients (and w) change every step: refill preallocated device buffers rather than
    # allocate tensors per call (at batch 1 the allocations cost as much as the network).
    t_buf, coef_buf, w_buf = (_Buffer(to_device, shape, on_cpu) for shape in ((1,), (5,), (1,)))
    num_classes = m.num_classes

    def step_fn(x, t, coef, z=None, x_prev=None, e_prev=None, y=None, w=0.0):
        """Conditional artifacts also take labels y (one-hot, on the device; None: the null class) and w."""
        zero = zeros_like(x)   # inputs whose coefficient is 0 still need a finite tensor
        with lock:             # the buffers are shared by every caller of this model
            args = [x, t_buf.fill(t), coef_buf.fill(coef), *(zero if v is None else v for v in (z, x_prev, e_prev))]
            if num_classes:
                args += [to_device(null_labels(x.shape[0], num_classes)) if y is None else y, w_buf.fill(w)]
            out = step(*args)
        return out[0], out[1]

    noise_steps = chain_noise = None
    if on_cpu:   # draw the noise with the artifact's compiled kernel, or with numpy for an older artifact
        if m.noise_library is not None:
            drawer = DeviceNoise(tvm, _load_noise_kernel(tvm, m))
            noise_steps, chain_noise = drawer.steps, drawer.chain_block
        else:
            noise_steps = lambda noise, k0, k1: host_steps(tvm, noise, k0, k1)   # noqa: E731
            chain_noise = lambda noise, draws: host_chain_block(tvm, noise, draws)   # noqa: E731

    chain_fn, chain_length = None, 0
    if "chain" in m.functions and on_cpu:
        chain, chain_length = function("chain"), manifest_chain_length(m)   # the checked manifest's ts (L,)
        ts_buf, coefs_buf = _Buffer(to_device, (chain_length,), on_cpu), _Buffer(to_device, (chain_length, 3), on_cpu)

        def chain_fn(x, ts: np.ndarray, coefs: np.ndarray, zs):
            """L steps in one call; zs is chain_noise's (B, L, ...) block."""
            with lock:
                return chain(x, ts_buf.fill(ts), coefs_buf.fill(coefs), zs)

    def eps_fn(x: np.ndarray, t: float, *cond) -> np.ndarray:
        """cond: (y one-hot rows, w) for conditional artifacts."""
        y_w = (to_device(cond[0]), to_device(np.array([cond[1]], np.float32))) if cond else ()
        return eps(to_device(x), to_device(np.full((len(x),), t, np.float32)), *y_w).numpy()

    decode_fn = None
    if m.model == Kind.LATENT_DIFFUSION:
        decoder = function("decoder")
        decode_fn = lambda z: to_numpy(decoder(to_device(z)))   # noqa: E731
    # A NaN check copies the state to the host; every 10 steps is cheap and still names where it began.
    return Model.from_manifest(m, Functions(
        "tvm", eps_fn=eps_fn, step_fn=step_fn, decode_fn=decode_fn, chain_fn=chain_fn, chain_noise_fn=chain_noise,
        noise_fn=noise_steps, to_device_fn=to_device, to_numpy_fn=to_numpy, check_every=10, chain_length=chain_length,
        # a tuned static-batch step beats the untuned chain at its batch size
        chain_skip=frozenset(int(b) for b in m.functions["step"].get("static", {}))))


class _Buffer:
    """A preallocated float32 device tensor, refilled before each call. On a CPU it is written through a
    numpy view of its memory: a Tensor.copyfrom costs ~10 us of Python per call, an element store ~0.1 us."""

    def __init__(self, to_device, shape: tuple[int, ...], on_cpu: bool):
        self.tensor = to_device(np.zeros(shape, np.float32))
        self.view = np.from_dlpack(self.tensor) if on_cpu else None

    def fill(self, values):
        if self.view is not None:
            self.view[...] = values
        else:
            self.tensor.copyfrom(np.asarray(values, np.float32).reshape(self.tensor.shape))
        return self.tensor


def _check_library(tvm, vm, m, name: str, file: str, batch: int, dev) -> None:
    """The VM's own parameter names (TVM passes arguments by position), then one call on zeros of the declared
    shapes at `batch` and its output shapes: a library compiled for other arguments fails here, with a line
    naming it, instead of inside a sampler (a shape or arity mismatch is a checked error in the VM, not a crash)."""
    inputs = m.functions[name].inputs
    try:
        arity = vm._get_function_arity("main")
        params = [(vm._get_function_param_name("main", i), None) for i in range(arity)]
    except (AttributeError, TypeError):   # a TVM without the introspection: the probe call still checks
        params = None
    if params is not None:
        check_loaded(m, name, file, "input", params)
    args = [tvm.runtime.tensor(np.zeros([batch if d == BATCH else d for d in s.shape], np.float32), device=dev)
            for s in inputs]
    try:
        out = vm["main"](*args)
    except Exception as e:   # TVM's checked errors: wrong arity, rank, shape or dtype
        raise GenccError(f"{m.root}: {file} (function {name!r}) does not take the manifest's inputs at batch "
                         f"{batch}: {_first_line(e)}") from None
    outs = [out] if hasattr(out, "shape") else list(out)
    check_loaded(m, name, file, "output", [(None, tuple(int(d) for d in o.shape)) for o in outs], batch)


def _first_line(e: Exception) -> str:
    """TVM errors carry a C++ backtrace after their message; the message is the last non-blank line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _load_noise_kernel(tvm, m):
    try:
        return tvm.runtime.load_module(str(m.root / m.noise_library))["normals"]
    except Exception as e:   # a TVM error while loading native code: report, don't crash
        raise GenccError(f"{m.root}: cannot load {m.noise_library}: {str(e).splitlines()[0]}") from None
