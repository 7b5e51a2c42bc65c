"""The served models, by name: loaded once at start, chosen by requests by name only (never by path)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gencc.runtime.artifact import is_artifact
from gencc.runtime.errors import GenccError
from gencc.runtime.model import Model
from gencc.runtime.samplers import SAMPLERS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Served:
    """One served model and what clients may ask of it."""

    name: str
    model: Model

    @property
    def diffusion(self) -> bool:
        return hasattr(self.model, "sde")

    @property
    def samplers(self) -> list[str]:
        return sorted(SAMPLERS) if self.diffusion else []

    @property
    def classes(self) -> list[str]:
        names = self.model.info.get("class_names") or self.model.info.get("classes")
        k = self.model.num_classes
        if isinstance(names, list) and len(names) == k:
            return [str(c) for c in names]
        return [str(i) for i in range(k)]

    @property
    def points(self) -> bool:
        return self.model.sample_shape == (2,)

    def metadata(self) -> dict:
        """The Open Inference Protocol v2 model metadata, with gencc's own fields beside it."""
        m = self.model
        shape = [-1, *m.sample_shape]
        return {"name": self.name, "versions": ["1"], "platform": f"gencc-{m.backend}",
                "inputs": [{"name": "seed", "datatype": "UINT64", "shape": [1]},
                           {"name": "label", "datatype": "INT64", "shape": [-1]}],
                "outputs": [{"name": "samples", "datatype": "FP32", "shape": shape}],
                "kind": str(m.kind), "backend": m.backend, "sample_shape": list(m.sample_shape),
                "samplers": self.samplers, "classes": self.classes, "conditional": bool(m.num_classes),
                "target": m.info.get("target"), "data": m.data_name}


def model_name(spec: str) -> tuple[str, str]:
    """`name=path` or a path whose folder stem names the model."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec.rstrip("/")).stem, spec
    if not NAME.match(name):
        raise GenccError(f"model name {name!r} (from {spec!r}) must be letters, digits, '.', '_' or '-', "
                         "at most 64; name it with name=path")
    return name, path


def load_models(specs: list[str], trusted_keys=None, require_signature: bool | None = None) -> dict[str, Served]:
    """Load every `name=path` (or path) once; two models of one name are refused."""
    from gencc import load

    served: dict[str, Served] = {}
    for spec in specs:
        name, path = model_name(spec)
        if name in served:
            raise GenccError(f"two models are named {name!r}; name them apart with name=path")
        if Path(path).is_dir() and not is_artifact(Path(path)):   # a checkpoint would pull in torch
            raise GenccError(f"{path!r} is not a compiled artifact; gencc serve runs artifacts on the light "
                             "runtime (gencc compile CKPT --out ART makes one)")
        served[name] = Served(name, load(path, trusted_keys=trusted_keys, require_signature=require_signature))
    if not served:
        raise GenccError("give at least one artifact to serve")
    return served
