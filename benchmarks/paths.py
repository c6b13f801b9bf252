"""Where the benchmarks find the shared model and data (``$FALCON_BENCH_SHARED``, default ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FALCON_BENCH_SHARED", REPO_ROOT.parent / "shared"))
SMOLLM_DIR = SHARED / "models" / "smollm2-135m-instruct-gguf"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOFU_DIR = SHARED / "data" / "tofu"
WIKITEXT_FILE = SHARED / "data" / "wikitext2" / "wiki.test.raw"
