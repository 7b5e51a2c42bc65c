"""Open a checkpoint (torch) or a compiled artifact (tvm, or ort on its ONNX graphs) as a `Model`."""
from __future__ import annotations

from pathlib import Path

from .artifact import is_artifact
from .errors import GenccError
from .model import Model

BACKENDS = ("tvm", "ort", "torch")


def load(path: str | Path, backend: str | None = None, device: str | None = None) -> Model:
    path = Path(path)
    if not path.exists():
        raise GenccError(f"{str(path)!r} does not exist")
    if backend is not None and backend not in BACKENDS:
        raise GenccError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
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
    from .backend_torch import load_checkpoint

    return load_checkpoint(path, device=device or "cpu")
