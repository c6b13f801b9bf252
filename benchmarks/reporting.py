"""What a benchmark report carries besides its numbers: the environment, and its tables as text."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_plugin.tools.common.tables import markdown_table


def environment() -> dict[str, Any]:
    """Versions, threads and load average: what a reader needs to judge the timings."""
    import torch
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in load] if load else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": git_state(),
        # settings that change measured memory or time when present (glibc's allocator, BLAS threads)
        "env": {k: os.environ[k] for k in MEASURED_ENV if k in os.environ},
    }


MEASURED_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "OMP_NUM_THREADS")


def git_state() -> dict[str, Any] | None:
    """HEAD commit of the falcon_plugin checkout and whether its core files differ from it."""
    import subprocess

    import falcon_plugin

    root = Path(falcon_plugin.__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "falcon_plugin"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"head": head.stdout.strip(), "falcon_plugin_modified": bool(dirty.stdout.strip())}


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of pre-formatted cells, columns left-aligned, no trailing newline (for ``print``)."""
    return markdown_table(header, rows, align_numbers=False).rstrip("\n")
