"""What every ``falcon-unlearn`` subcommand shares: the error convention, output streams, logging set-up.

Bad input ends with one line ``falcon-unlearn: error: <message>`` on stderr and exit code 2: argparse
usage errors through :class:`Parser`, everything else by raising
:class:`~falcon_plugin.tools.common.errors.InputError` (``main`` prints it). Progress and logs go to
stderr; only the final table goes to stdout, through :func:`emit`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from falcon_plugin.tools.common.errors import InputError

PROG = "falcon-unlearn"
FORMATTER = argparse.RawDescriptionHelpFormatter
_OUT = {"stream": sys.stdout}
_NOISY_LOGGERS = ("absl", "urllib3", "matplotlib", "PIL", "filelock", "httpx")
TOOLS_EXTRA_MODULES = frozenset({"rouge_score", "tokenizers", "yaml"})
"""Modules of the ``tools`` extra (pyproject.toml): the core installs without them, the commands need them."""


def emit(text: str) -> None:
    """Write to the real stdout (while a command runs, ``sys.stdout`` points at stderr)."""
    _OUT["stream"].write(text)
    _OUT["stream"].flush()


def bind_stdout() -> None:
    """Make :func:`emit` write to the current ``sys.stdout`` (called by ``main`` before a command runs)."""
    _OUT["stream"] = sys.stdout


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options every subcommand has: ``-v`` and ``-q``."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; tracebacks on unexpected errors"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")


MIN_MAX_LENGTH = 8
"""Shortest ``--max-length`` a command accepts: room for a prompt and an answer token (as ``attack``)."""
SEED_MAX = 2**32 - 1
"""Largest seed every library the commands seed accepts (numpy's ``np.random.seed``, which the
Trainer's ``set_seed`` calls; a negative seed would fail only there, after the fine-tuning)."""


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """``path`` is, or can become, a writable folder; else :class:`InputError` naming it (before any work)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise InputError(f"{flag} {path} is not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """``seed`` in ``[0, 2**32 - 1]``; else :class:`InputError` naming the value."""
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"{flag} must be in [0, {SEED_MAX}], got {seed}")


def check_positive(value: int | None, flag: str, minimum: int = 1) -> None:
    """``value`` (when given) at least ``minimum``; else :class:`InputError` naming the value."""
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be >= {minimum}, got {value}")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own arguments, arguments after ``--``)."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


@contextlib.contextmanager
def cli_environment(verbose: bool, quiet: bool) -> Iterator[None]:
    """Logging to stderr, quiet libraries, stdout kept for the table; everything restored afterwards
    (``main`` also runs in-process, from tests and notebooks)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    saved_tqdm = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is first imported
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_verbosity, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries that print (DeepSpeed's notices) -> stderr
            yield
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(hf_verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm
