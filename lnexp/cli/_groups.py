"""The command groups: `lnexp` itself, which ends every error in one line, and the groups with a
default command (`lnexp sweep CONFIG` is `lnexp sweep run CONFIG`)."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from lnexp.core.errors import LnexpError


def fail(message: str, code: int = 2) -> LnexpError:
    """A bad option or argument, or any ending that is one line: raised, it reaches LnexpGroup.main."""
    error = LnexpError(message)
    error.exit_code = code
    return error


class LnexpGroup(TyperGroup):
    """`lnexp`: the one place a command ends in error. Typer's checks of the command line (a value not
    among an option's choices, a number out of range, a missing argument) and an LnexpError (bad input,
    an unusable run folder: ConfigError, RunError, DecodeError, ...) end with `error: <message>` on
    stderr and their exit code, Ctrl-C with exit code 130: never a traceback."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # the base of every error Typer's parser raises
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except LnexpError as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # which Typer would end in silence
            raise fail("interrupted", 130) from None


def with_default(command: str) -> type[TyperGroup]:
    """A group class whose first argument, unless it names one of the group's commands or asks for
    help, goes to `command`: the group's commands are spelled `GROUP NAME ...`, its default one also
    `GROUP ...`."""

    class DefaultCommandGroup(TyperGroup):
        def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
            if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
                args = [command, *args]
            return super().parse_args(ctx, args)

    return DefaultCommandGroup
