"""Checks on output paths made before any work, so that a bad --out fails in a second, not after an hour."""
from __future__ import annotations

from pathlib import Path

from gencc.runtime.atomic import check_output_path
from gencc.runtime.errors import GenccError


def check_out_file(path: Path, suffix: str | None = None) -> None:
    """`path` can be written as a file: its folder exists, it is not a folder, and it ends in `suffix`."""
    check_output_path(path, suffix=suffix)


def check_overwrite(paths, force: bool) -> None:
    """Like compile: an existing output is replaced only with --force (and then only once the new one is whole)."""
    for p in paths:
        if p is not None and not force:
            check_output_path(p, existing="pass --force to replace it")


def check_distinct(folder: Path, others) -> None:
    """A --preview folder is none of the command's other outputs."""
    for other in others:
        if other is not None and Path(folder).resolve() == Path(other).resolve():
            raise GenccError(f"--preview {str(folder)!r} is also an output ({str(other)!r}); choose another folder")


def as_paths(request, *names: str) -> None:
    """Make the named fields of a frozen request Paths, so that a caller may pass strings."""
    for name in names:
        value = getattr(request, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(request, name, Path(value))
