"""Machine-readable output, one convention for every command: `--json FILE` writes the result as JSON
(atomically); `--json -` prints it to stdout and sends the human-readable text to stderr instead."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from gencc.runtime.atomic import check_output_path
from gencc.runtime.errors import GenccError

STDOUT = "-"


def check_json_dest(dest: Path | None) -> None:
    """Refuse an unwritable --json FILE before any work is done."""
    if dest is None or str(dest) == STDOUT:
        return
    check_output_path(dest)
    if dest.suffix != ".json":
        raise GenccError(f"--json output {str(dest)!r} must end in .json (or be - for stdout)")


def say(text: str, dest: Path | None) -> None:
    """Human-readable text: stdout, unless stdout carries the JSON."""
    typer.echo(text, err=dest is not None and str(dest) == STDOUT)


def emit_json(result, dest: Path | None) -> None:
    if dest is None:
        return
    text = json.dumps(result, indent=2, default=str) + "\n"
    if str(dest) == STDOUT:
        typer.echo(text, nl=False)
        return
    from gencc.runtime.atomic import write_bytes_atomic

    write_bytes_atomic(dest, text.encode())
    typer.echo(f"wrote {dest}")
