"""Open a checkpoint or artifact path with the right backend."""
from __future__ import annotations

from pathlib import Path

from .errors import GenccError
from .model import Model

BACKENDS = ("torch",)


def load(path: str | Path, backend: str | None = None, device: str = "cpu") -> Model:
    path = Path(path)
    if not path.exists():
        raise GenccError(f"{str(path)!r} does not exist")
    backend = backend or "torch"
    if backend not in BACKENDS:
        raise GenccError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    from .backend_torch import load_checkpoint

    return load_checkpoint(path, device=device)
