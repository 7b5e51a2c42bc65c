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


# The interface layer (gencc/api.py): what each `gencc` command does, callable without typer. Loaded on first
# use, so that `import gencc` stays as light as sampling an artifact needs (tests/test_package.py).
_API = ("BenchRequest", "SampleRequest", "TrainRequest", "bench", "describe", "evaluate", "export", "keygen",
        "make_data", "merge", "sample_to_file", "train", "verify")

# ---- compiling users' own models (issue 15): gencc.compile(...) and gencc.from_torch(...) go here. ----


def __getattr__(name: str):
    if name in _API:
        from gencc import api

        return getattr(api, name)
    raise AttributeError(f"module 'gencc' has no attribute {name!r}")


__all__ = ["GenccError", "load", "__version__", *_API]
