"""Open a checkpoint (torch) or a compiled artifact (tvm, or ort on its ONNX graphs) as a `Model`."""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .artifact import is_artifact
from .atomic import readable_dir
from .errors import GenccError
from .model import Model

BACKENDS = ("tvm", "ort", "torch")
# The torch backend builds the models' own networks, so it lives with them; found by name, the runtime
# imports nothing from gencc.models and stays importable without torch.
TORCH_BACKEND = "gencc.models.torch_backend"


def load(path: str | Path, backend: str | None = None, device: str | None = None,
         trusted_keys: Iterable | None = None, require_signature: bool | None = None) -> Model:
    """`trusted_keys` (PEM paths or Ed25519 keys): refuse an artifact that none of them signed,
    checked before anything else in it is read. None: as the environment says (runtime/policy.py:
    GENCC_REQUIRE_SIGNATURE=1 with GENCC_TRUSTED_KEYS), unless `require_signature` is False."""
    path = readable_dir(path)   # an artifact or checkpoint being replaced: its previous version
    if not path.exists():
        raise GenccError(f"{str(path)!r} does not exist")
    if backend is not None and backend not in BACKENDS:
        raise GenccError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if trusted_keys is not None:
        if not is_artifact(path):
            raise GenccError(f"{str(path)!r} is not a compiled artifact; only artifacts carry signatures")
        from .signing import verify_signature

        verify_signature(path, trusted_keys)
    elif require_signature is not False:
        from .policy import check_required_signature

        check_required_signature(path)
    if is_artifact(path):
        backend = backend or "tvm"
        if backend == "torch":
            raise GenccError(f"{str(path)!r} is a compiled artifact; the torch backend needs a checkpoint")
        if backend == "ort":
            from .backend_ort import load_artifact
        else:
            from .backend_tvm import load_artifact
        return load_artifact(path, device)
    if backend not in (None, "torch"):
        raise GenccError(f"{str(path)!r} is not a compiled artifact (no manifest.json); "
                         f"the {backend} backend needs one: run gencc compile first")
    torch_backend = _torch_backend()
    if (path / "latent-diffusion.json").is_file():   # models/latent.py's marker
        return torch_backend.load_latent_checkpoint(path, device=device or "cpu")
    return torch_backend.load_checkpoint(path, device=device or "cpu")


def _torch_backend() -> ModuleType:
    try:
        return importlib.import_module(TORCH_BACKEND)
    except ImportError as e:   # torch, or gencc's models package, is not installed
        raise GenccError(f"the torch backend ({TORCH_BACKEND}) cannot be imported: {e}; sampling a checkpoint "
                         "needs torch and gencc's models package (or compile it and load the artifact)") from None
