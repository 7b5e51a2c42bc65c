"""The command group's behaviour for every command: plain help, and library notices as one line each.

Plain metavars in `--help`: recent typer prints Python types (`<bool>`, `<list[Path]>`) and wraps required
arguments in braces (`{path}`); a user reads `--force`, `--trusted-key <path>...` and `PATH` instead.

The fix is made on the parameter objects typer builds (a subclass per kind), so every command gets it from
one place (main.py calls plain_help once, after the last command) and no option's declaration has to spell
out a metavar.
"""
from __future__ import annotations

import warnings

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from gencc.runtime.notices import GenccNotice


def _plain_type(label: str | None) -> str | None:
    """`<list[Path]>` -> `<path>...`: the element type, repeated, as the other options' types are shown."""
    if label and label.startswith("<list[") and label.endswith("]>"):
        return f"<{label[len('<list['):-2].lower()}>..."
    return label


class _PlainOption(TyperOption):
    def display_type_rich(self, ctx):
        if self.is_flag:  # a switch takes no value: nothing to show
            return None
        return _plain_type(super().display_type_rich(ctx))


class _PlainArgument(TyperArgument):
    def _usage_display_name(self) -> str:
        name = self.metavar or self.name.upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

    def display_type_rich(self, ctx):
        return _plain_type(super().display_type_rich(ctx))


def _plain(params: list) -> list:
    """Re-class typer's own parameter objects in place: typer builds them from the signatures, so there is
    no hook to choose their class, and the subclasses only change how help displays them."""
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = _PlainOption
        elif type(p) is TyperArgument:
            p.__class__ = _PlainArgument
    return params


class PlainHelpCommand(TyperCommand):
    def get_params(self, ctx):
        return _plain(super().get_params(ctx))


class GenccGroup(TyperGroup):
    def get_params(self, ctx):
        return _plain(super().get_params(ctx))

    def invoke(self, ctx):
        """Run the command with the library's notices (runtime/notices.py) shown as `gencc: note: ...` lines
        on stderr, each message once, instead of Python's warning format with a file name and source line."""
        with warnings.catch_warnings():
            warnings.simplefilter("default", GenccNotice)   # once per distinct message
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, GenccNotice):
                    typer.echo(f"gencc: note: {message}", err=True)
                else:
                    shown(message, category, filename, lineno, file, line)
            warnings.showwarning = show
            return super().invoke(ctx)


def plain_help(app) -> None:
    """Make each command registered so far build its parameters as the plain kinds above (the app itself
    names GenccGroup as its class)."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainHelpCommand
