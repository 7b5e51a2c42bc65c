"""The one exception type gencc raises for user-facing problems; the CLI prints it as one line."""
from __future__ import annotations


class GenccError(ValueError):
    """A problem with the user's input, files or request. The message names the offending value."""


def size_text(nbytes: int | float) -> str:
    """A byte count for people: "800 B", "763 KiB", "3.5 GiB" (binary units, 3 significant digits)."""
    value, unit = float(nbytes), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" or value >= 1000 else f"{value:.3g} {unit}"
