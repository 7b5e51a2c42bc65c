"""gencc: train generative models in PyTorch, compile them with Apache TVM, sample them anywhere."""
from __future__ import annotations

__version__ = "0.1.0"

from gencc.runtime.errors import GenccError


def load(path, backend: str | None = None, device: str = "cpu"):
    """Load a checkpoint (torch backend) for sampling: `gencc.load(p).sample(n, seed=0)`."""
    from gencc.runtime.loader import load as _load

    return _load(path, backend=backend, device=device)


__all__ = ["GenccError", "load", "__version__"]
