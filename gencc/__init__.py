"""gencc: train generative models in PyTorch, compile them with Apache TVM, sample them anywhere."""
from __future__ import annotations

__version__ = "0.1.0"

from gencc.runtime.errors import GenccError


def load(path, backend: str | None = None, device: str | None = None, trusted_keys=None,
         require_signature: bool | None = None):
    """Load a compiled artifact (tvm or ort backend) or a checkpoint (torch backend) for sampling.

    `gencc.load("moons.gencc").sample(1000, seed=0)`. Loading an artifact runs its native code, like
    importing a Python module: load only artifacts you trust; their hashes are checked first. With
    `trusted_keys` (paths to public PEM files, or Ed25519 key objects), an artifact must also carry a
    valid signature by one of them, checked before any of its code is loaded. Without `trusted_keys`, the
    environment decides: GENCC_REQUIRE_SIGNATURE=1 requires a signature by a key in GENCC_TRUSTED_KEYS
    (PEM paths separated by os.pathsep), unless `require_signature=False` (an artifact you just built).
    """
    from gencc.runtime.loader import load as _load

    return _load(path, backend=backend, device=device, trusted_keys=trusted_keys,
                 require_signature=require_signature)


# Compiling users' own networks (issue 15). `compile` shadows the builtin here on purpose: the library's verb.
def compile(source, out, *, log=None, **options) -> dict:
    """Compile a network into the artifact folder `out`; returns its manifest.

    `source`: a torch.nn.Module (an eps-network net(x, time) or, with kind="gan", a generator G(z)), an
    .onnx file with inputs (x, time), a diffusers UNet2DModel or pipeline folder, an importable
    "pkg.module:factory" (with weights="w.safetensors"), or a gencc checkpoint or export folder.
    `options` (compiler/options.py's CompileOptions): sample_shape, time_input ("t", "timestep:N",
    "sigma"), prediction ("eps", "x0", "v"), schedule ("vp", "linear", "scaled_linear",
    "squaredcos_cap_v2"), kind ("diffusion", "gan"), latent_shape, target ("llvm", "cuda"), arch, force, ...
    `log`: called with each progress line. Nothing is written unless every check passes.

        gencc.compile(unet, "unet.gencc", sample_shape=(1, 8, 8), time_input="timestep:1000")
    """
    from gencc.compiler.options import CompileOptions
    from gencc.compiler.sources import compile_source

    return compile_source(source, out, CompileOptions.make(**options), log or (lambda s: None))


def from_torch(net, **options):
    """The same Model a compiled artifact of `net` gives, run by torch (the options are gencc.compile's).

    `gencc.from_torch(unet, sample_shape=(1, 8, 8), time_input="timestep:1000").sample(16, seed=0)`
    """
    from gencc.compiler.options import CompileOptions
    from gencc.compiler.sources import from_torch as _from_torch

    return _from_torch(net, CompileOptions.make(**options))


# The interface layer (gencc/api.py): what each `gencc` command does, callable without typer. Loaded on first
# use, so that `import gencc` stays as light as sampling an artifact needs (tests/test_package.py).
_API = ("BenchRequest", "SampleRequest", "TrainRequest", "bench", "describe", "evaluate", "export", "keygen",
        "make_data", "merge", "sample_to_file", "train", "verify")


def __getattr__(name: str):
    if name in _API:
        from gencc import api

        return getattr(api, name)
    raise AttributeError(f"module 'gencc' has no attribute {name!r}")


__all__ = ["GenccError", "compile", "from_torch", "load", "__version__", *_API]
