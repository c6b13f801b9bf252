"""The ``falcon-unlearn`` command: ``demo``, ``mi``, ``leaderboard``, ``sweep`` and ``attack``,
one module each.

Each command module has ``add_parser(subparsers)`` and ``run(args) -> exit code``; :mod:`.common`
holds the error convention and logging set-up. Bad input (a missing path, a malformed file, an
unknown name) ends with one line ``falcon-unlearn: error: ...`` on stderr and exit code 2; progress
goes to stderr, and only the final table goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from falcon_plugin.tools.common.errors import InputError

from . import attack, demo, layer_sweep, leaderboard, mi, sweep
from .common import FORMATTER, PROG, TOOLS_EXTRA_MODULES, Parser, bind_stdout, cli_environment, split_extra

_DESCRIPTION = """\
FALCON LLM unlearning (arXiv 2502.01472), as a plugin for open-unlearning.
Start with `falcon-unlearn demo` (offline, a few minutes on 2 CPU cores); `falcon-unlearn COMMAND -h`
explains each command.
"""

_COMMAND_MODULES = {
    "demo": demo,
    "mi": mi,
    "layer-sweep": layer_sweep,
    "leaderboard": leaderboard,
    "sweep": sweep,
    "attack": attack,
}
"""Subcommand name -> its module (``add_parser(subparsers)``, ``run(args)``): a new command is one entry."""
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {n: m.run for n, m in _COMMAND_MODULES.items()}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``falcon-unlearn`` (public so docs and tests can render ``--help``)."""
    from falcon_plugin import __version__

    parser = Parser(prog=PROG, description=_DESCRIPTION, formatter_class=FORMATTER)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in _COMMAND_MODULES.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``falcon-unlearn`` console script; returns the exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    own, extra = split_extra(raw)
    parser = build_parser()
    args = parser.parse_args(own)
    if extra and args.command != "sweep":
        parser.error(f"arguments after '--' are only for sweep: {' '.join(extra)}")
    args.extra = extra
    bind_stdout()
    try:
        with cli_environment(args.verbose, args.quiet):
            from falcon_plugin.errors import FalconConfigError

            try:
                return COMMANDS[args.command](args)
            except FalconConfigError as err:
                raise InputError(str(err)) from None
    except InputError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as err:  # a bug or an environment problem: one line, traceback with --verbose
        if args.verbose:
            raise
        if isinstance(err, ModuleNotFoundError) and err.name in TOOLS_EXTRA_MODULES:
            sys.stderr.write(
                f"{PROG}: error: {args.command} needs the tools extra (no module {err.name!r}): "
                "pip install 'falcon-unlearning[tools]'\n"
            )
        else:
            sys.stderr.write(
                f"{PROG}: error: {type(err).__name__}: {err} (run with --verbose for the traceback)\n"
            )
        return 1


__all__ = ["COMMANDS", "build_parser", "main"]
