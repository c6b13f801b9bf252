"""``python -m falcon_plugin.tools.cli``: the same as the installed ``falcon-unlearn`` script."""

from __future__ import annotations

import sys

from falcon_plugin.tools.cli import main

sys.exit(main())
