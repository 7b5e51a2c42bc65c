"""The model kinds. Code compares these, never the strings; the strings are their serialised form."""
from __future__ import annotations

import enum
import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:   # Python 3.10 has no StrEnum; this is the part of it gencc relies on
    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


class Kind(StrEnum):
    """A model kind; its value is how manifests, checkpoints and the CLI spell it."""

    DIFFUSION = "diffusion"
    GAN = "gan"
    LATENT_DIFFUSION = "latent-diffusion"
