"""The model kinds. Code compares these, never the strings; the strings are their serialised form."""
from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    """A model kind; its value is how manifests, checkpoints and the CLI spell it."""

    DIFFUSION = "diffusion"
    GAN = "gan"
    LATENT_DIFFUSION = "latent-diffusion"
