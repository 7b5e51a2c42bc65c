"""Read the small JSON files gencc trusts nothing about (manifests, configs, signatures): bounded size,
bounded nesting, and one-line errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import GenccError, size_text

MAX_BYTES = 1 << 20
MAX_DEPTH = 32   # gencc's own files nest at most 6 deep; deeper is hostile, and repr() recurses on it


def read_json(path: str | Path, what: str, max_bytes: int = MAX_BYTES) -> Any:
    """Parse `path` (a regular file, not a symlink, at most `max_bytes`) as JSON."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise GenccError(f"{what} {str(path)!r} is missing or not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)   # never more, whatever the file has grown to
    except OSError as e:
        raise GenccError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise GenccError(f"{what} {str(path)!r} is over the size limit of {size_text(max_bytes)}")
    return parse_json(data, f"{what} {str(path)!r}")


def parse_json(data: bytes, what: str) -> Any:
    # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; RecursionError deep nesting.
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise GenccError(f"{what} is not valid JSON: {one_line(e)}") from None
    if depth(value) > MAX_DEPTH:
        raise GenccError(f"{what} nests deeper than {MAX_DEPTH} levels")
    return value


def depth(value: Any) -> int:
    """Nesting depth of lists and objects, without recursion (a hostile file may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def one_line(e: BaseException | str, limit: int = 200) -> str:
    """The first line of an error message, cut to `limit` characters."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def short(value: Any, limit: int = 80) -> str:
    """repr() of a value from an untrusted file, cut to `limit` characters, for error messages."""
    text = repr(value) if depth(value) <= MAX_DEPTH else f"<{type(value).__name__} nested too deep>"
    return text if len(text) <= limit else text[:limit] + "..."
