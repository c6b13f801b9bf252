"""The one exception type the ``falcon-unlearn`` command turns into a one-line message and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a missing path, a malformed data file, an unknown name).

    The message must name the offending value; the CLI prints ``falcon-unlearn: error: <message>`` on
    stderr and exits 2. (The core's own errors, e.g. ``FalconConfigError``, are turned into the same line.)
    """
