"""Notices: things the library did on the user's behalf that they should know of (an image resized, an
alpha channel dropped), raised as warnings of one category, so that a program using the library sees
them on stderr, can filter them, and the CLI can print each as one `gencc: note: ...` line."""
from __future__ import annotations

import warnings


class GenccNotice(UserWarning):
    """Something gencc changed in the user's input, told once."""


def notice(message: str) -> None:
    warnings.warn(message, GenccNotice, stacklevel=3)   # attributed to the caller of the function noticing
