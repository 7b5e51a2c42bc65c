"""One backend's measurements for `gencc bench`, run in a process of its own.

TVM's thread pool keeps spinning after a parallel call and slows whatever runs next in the same
process, so every backend is measured alone. Prints one JSON object on its last line of stdout.
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np

T0 = time.perf_counter()   # as close to interpreter start as a module can get


def time_calls(fn, min_seconds: float = 0.2, repeats: int = 7, warmup: int = 3) -> dict:
    """Median and spread (p10, p90) of one call's wall time, over `repeats` timed batches of calls."""
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    inner = max(1, int(min_seconds / repeats / one))
    per_call = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        per_call.append((time.perf_counter() - t) / inner)
    q = statistics.quantiles(per_call, n=10) if len(per_call) > 1 else per_call * 9
    return {"median_s": statistics.median(per_call), "p10_s": q[0], "p90_s": q[-1], "calls": inner * repeats}


def torch_step(path: str, compiled: bool):
    """The PyTorch loop a user already has: eps = net(x, t); x = a x + b eps + c z, in torch tensors."""
    import torch

    from gencc.models import checkpoint as ckpt
    from gencc.models.factory import config_from_dict, load_net

    config = ckpt.load_config(path)
    cfg = config_from_dict(config["net"])
    net = load_net(path, config)
    if compiled:
        net = torch.compile(net)
    latent = (cfg.latent_dim,) if config["model"] == "gan" else None
    return _torch_loop(net, tuple(config["data"]["sample_shape"]), latent), net, config


def _torch_loop(net, sample_shape: tuple[int, ...], latent_shape: tuple[int, ...] | None):
    """make(batch) -> one step of the torch loop: G(z) for a generator (`latent_shape`), else
    x = a x + b net(x, t) + c z."""
    import torch

    def make(batch: int):
        if latent_shape is not None:
            z = torch.randn(batch, *latent_shape)
            return lambda: net(z)
        x, z = torch.randn((batch,) + sample_shape), torch.randn((batch,) + sample_shape)
        t = torch.full((batch,), 0.5)

        def step():
            with torch.inference_mode():
                return 1.01 * x - 0.1 * net(x, t) + 0.05 * z
        return step
    return make


def user_torch_step(source: str, options: dict, compiled: bool):
    """A user's network as `gencc compile` adapts it (compiler/sources.py), in the same torch loop as
    torch_step; returns (make, the runtime Model over it). The adapter is what the artifact's step
    compiles, so torch and the compiled backends compute the same thing."""
    import torch

    from gencc.compiler.options import CompileOptions
    from gencc.compiler.sources import model_of, resolve

    user = resolve(source, CompileOptions.make(**{k: v for k, v in options.items() if v is not None}))
    if not hasattr(user, "module"):
        raise ValueError(f"{source!r} is not a user's network source")
    model = model_of(user)
    net = torch.compile(user.module) if compiled else user.module
    latent = tuple(user.options.latent_shape) if user.options.kind == "gan" else None
    return _torch_loop(net, user.sample_shape, latent), model, net


def compiled_step(model):
    """A step of an artifact's fused function with the state already in the backend's arrays."""
    from gencc.runtime.model import GanModel
    from gencc.runtime.samplers import Coef

    def make(batch: int):
        if isinstance(model, GanModel):
            z = np.random.default_rng(0).standard_normal((batch,) + model.latent_shape).astype(np.float32)
            return lambda: model.net.generate(z)
        x, z = (model.net.to_device(np.random.default_rng(i).standard_normal((batch,) + model.state_shape)
                                    .astype(np.float32)) for i in (0, 1))
        coef = Coef(1.01, -0.1, 0.05)
        return lambda: model.net.step(x, 0.5, coef, z)
    return make


def main(args: dict) -> dict:
    from gencc.models.latent import LATENT_DIR, is_latent_checkpoint
    from gencc.runtime.loader import load
    from gencc.runtime.model import LatentDiffusionModel

    backend, path = args["backend"], args["path"]
    if backend in ("torch", "torch-compile") and "user_options" in args:
        make, model, net = user_torch_step(path, args["user_options"], compiled=backend == "torch-compile")
        if backend == "torch-compile":
            model.net.eps_fn = _torch_eps(net)
    elif backend in ("torch", "torch-compile"):
        # latent diffusion: the step is its latent eps-network's, a plain diffusion checkpoint
        net_path = f"{path}/{LATENT_DIR}" if is_latent_checkpoint(path) else path
        make, net, config = torch_step(net_path, compiled=backend == "torch-compile")
        model = load(path, backend="torch")
        if backend == "torch-compile":
            model.net.eps_fn = _torch_eps(net)   # the torch backend's Functions: its eps, compiled
    else:
        model = load(path, backend="tvm" if backend.startswith("tvm") else "ort",
                     require_signature=False if args.get("built_here") else None)
        make = compiled_step(model)
    first = make(1)
    first()
    result = {"backend": backend, "startup_s": time.perf_counter() - T0, "batches": {}}
    for batch in args["batches"]:
        r = {"step": time_calls(make(batch), min_seconds=args.get("min_seconds", 0.2))}
        if isinstance(model, LatentDiffusionModel):   # the decoder runs once per sample, after the last step
            z = np.random.default_rng(2).standard_normal((batch,) + model.latent_shape).astype(np.float32)
            r["decoder"] = time_calls(lambda z=z: model.net.decode(z), min_seconds=args.get("min_seconds", 0.2))
        if args["steps"] > 0:
            n = max(batch, args.get("min_samples", 1))

            def run(seed: int = 0, n: int = n, batch: int = batch):   # bound now: B023
                model.sample(n, steps=args["steps"], sampler=args["sampler"], seed=seed, batch_size=batch)
            run()   # warm-up, as for the step: first calls allocate the VM's workspace, plans get cached
            # The median of several whole runs (at least 3, and at least min_seconds of them): a single
            # run of a tiny batch lasts milliseconds and would time scheduler noise.
            times = []
            while len(times) < 3 or sum(times) < args.get("min_seconds", 0.2):
                t = time.perf_counter()
                run(len(times) + 1)
                times.append(time.perf_counter() - t)
            seconds = float(np.median(times))
            r["end_to_end"] = {"samples": n, "steps": args["steps"], "seconds": seconds, "runs": len(times),
                               "samples_per_s": n / seconds}
        result["batches"][str(batch)] = r
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _torch_eps(net):
    """eps_fn(x, t) of a runtime Model, computed by `net` (the torch.compile'd network)."""
    import torch

    def eps_fn(x, t):
        with torch.inference_mode():
            return net(torch.from_numpy(x), torch.full((len(x),), t)).numpy()
    return eps_fn


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a worker started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            lines = status.readlines()
        for line in lines:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_matmul(n: int = 2048, repeats: int = 5) -> dict:
    """The machine's float32 matmul peak, measured now: best of numpy's and torch's n x n x n product.

    Also what says whether the machine was quiet: torch's product on one thread (`one_thread_gflops`;
    on a quiet machine the peak is about `threads` times it, on a busy one the threads wait for each
    other and the peak falls to it or below) and the threads of other processes running before and
    after (`busy_threads`, runtime/threads.busy_elsewhere). compiler/bench.busy_reasons judges them.
    """
    from gencc.runtime.threads import busy_elsewhere

    out = {"busy_threads": [busy_elsewhere()]}
    a, b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in (0, 1))
    out["numpy_gflops"] = 2 * n ** 3 / time_calls(lambda: a @ b, min_seconds=1.0, repeats=repeats)["median_s"] / 1e9
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        seconds = time_calls(lambda: ta @ tb, min_seconds=1.0, repeats=repeats)["median_s"]
        out["torch_gflops"] = 2 * n ** 3 / seconds / 1e9
        out["threads"] = torch.get_num_threads()
        torch.set_num_threads(1)
        one = time_calls(lambda: ta @ tb, min_seconds=0.5, repeats=3)["median_s"]
        out["one_thread_gflops"] = 2 * n ** 3 / one / 1e9
    except ImportError:
        pass
    out["peak_gflops"] = max(out["numpy_gflops"], out.get("torch_gflops", 0.0))
    out["size"] = n
    out["busy_threads"].append(busy_elsewhere())
    return out


def _measure(request: dict) -> dict:
    """A backend's measurements; torch's under gencc's thread policy, as `gencc sample` runs it."""
    if request["backend"].startswith("torch"):
        from gencc.runtime.threads import torch_threads

        with torch_threads() as n:
            return {**main(request), "torch_threads": n}
    return main(request)

if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    try:
        answer = peak_matmul() if request.get("peak") else _measure(request)
    except Exception as e:   # reported in the table as this backend's error, not a crash of the whole bench
        first_line = str(e).splitlines()[0] if str(e) else ""
        answer = {"backend": request.get("backend"), "error": f"{type(e).__name__}: {first_line}"}
    print(json.dumps(answer))
