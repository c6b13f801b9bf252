"""The protocol's results without its models: what ``report.py`` and ``falcon-unlearn leaderboard`` read.

``$WORK`` (``benchmarks/tofu_quality.sh``'s cache) holds gigabytes of models and checkpoints and lives on one
machine; a fresh machine starts with an empty cache, and every earlier run's numbers are gone with it. This
keeps, in a folder that can be committed (``docs/results/archive`` by default), only the files the reports
read, laid out as in ``$WORK`` (a few KB a run):

* ``evals/<reference>/TOFU_SUMMARY.json`` and ``TOFU_EVAL.json``, ``evals/probe_*.json``;
* ``unlearn/<run>/``: ``TOFU_SUMMARY.json``, ``TOFU_EVAL.json``, ``seconds``, ``DONE``, ``.hydra/*.yaml``,
  FALCON's ``mi_report.json`` / ``.png``;
* ``attacks/<run>/attacks.json``;
* ``logs/ul_<run>.log``: the per-step training-log lines (``{'loss': ...}``, FALCON's ``falcon/*``).

Every ``TOFU_EVAL.json`` keeps each metric's ``agg_value`` and the per-question values only of
``forget_truth_ratio`` (:data:`PER_QUESTION`): what forget_quality's KS test, privleak's reference and the
report's truth-ratio table read. So a restored reference retain model's file still serves as the host's
``retain_logs_path``.

``archive WORK ARCHIVE`` copies finished work (unlearning runs with ``DONE``) into ARCHIVE, replacing what
is there; ``restore ARCHIVE WORK`` copies into WORK what WORK lacks, never over a file it has. Every file is
written to a temporary name and renamed. Usage: archive.py archive|restore SRC DST
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from falcon_plugin.atomic import atomic_write

PER_QUESTION = frozenset({"forget_truth_ratio"})
RUN_FILES = ("TOFU_SUMMARY.json", "TOFU_EVAL.json", "seconds", "DONE", "mi_report.json", "mi_report.png")
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
REFERENCE_FILES = ("TOFU_SUMMARY.json", "TOFU_EVAL.json")
LOG_MARKERS = ("{'loss':", "'falcon/", "'train_runtime'")


def trim_eval(data: dict) -> dict:
    """A TOFU_EVAL.json with each metric's ``agg_value``, per-question values only for PER_QUESTION."""
    trimmed = {}
    for metric, value in data.items():
        if isinstance(value, dict) and metric not in PER_QUESTION:
            trimmed[metric] = {k: v for k, v in value.items() if k != "value_by_index"}
        else:
            trimmed[metric] = value
    return trimmed


def _write(dst: Path, data: bytes) -> None:
    atomic_write(dst, lambda tmp: tmp.write_bytes(data))


def _archived_bytes(src: Path) -> bytes:
    if src.name == "TOFU_EVAL.json":
        data = json.loads(src.read_text(encoding="utf-8"))
        return json.dumps(trim_eval(data), indent=1).encode()
    if src.suffix == ".log":
        lines = src.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
        kept = [line.strip() for line in lines if any(m in line for m in LOG_MARKERS)]
        return ("\n".join(kept) + "\n").encode() if kept else b""
    return src.read_bytes()


def archived_files(work: Path) -> Iterator[tuple[Path, Path]]:
    """(file in WORK, its path relative to WORK) for everything the archive keeps of finished work."""
    evals = work / "evals"
    if evals.is_dir():
        for ref in sorted(p for p in evals.iterdir() if p.is_dir() and not p.name.endswith(".tmp")):
            for name in REFERENCE_FILES:
                yield ref / name, Path("evals", ref.name, name)
        for probe in sorted(evals.glob("probe_*.json")):
            yield probe, Path("evals", probe.name)
    unlearn = work / "unlearn"
    runs = sorted(p for p in unlearn.iterdir() if (p / "DONE").exists()) if unlearn.is_dir() else []
    for run in runs:
        for name in RUN_FILES:
            yield run / name, Path("unlearn", run.name, name)
        for name in HYDRA_FILES:
            yield run / ".hydra" / name, Path("unlearn", run.name, ".hydra", name)
        yield work / "logs" / f"ul_{run.name}.log", Path("logs", f"ul_{run.name}.log")
    attacks = work / "attacks"
    if attacks.is_dir():
        for result in sorted(attacks.glob("*/attacks.json")):
            yield result, Path("attacks", result.parent.name, "attacks.json")


def archive(work: Path, dest: Path) -> int:
    """Copy the results of WORK's finished work into DEST (replacing older copies); the number of files."""
    n = 0
    for src, rel in archived_files(work):
        if src.is_file():
            data = _archived_bytes(src)
            if data or src.stat().st_size == 0:
                _write(dest / rel, data)
                n += 1
    return n


def restore(source: Path, work: Path) -> int:
    """Copy into WORK every archived file WORK lacks (never over one it has); the number of files."""
    n = 0
    for src in sorted(p for p in source.rglob("*") if p.is_file()):
        dst = work / src.relative_to(source)
        if not dst.exists():
            _write(dst, src.read_bytes())
            n += 1
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("archive", "restore"):
        print(__doc__.rsplit("Usage: ", 1)[1].strip(), file=sys.stderr)
        return 2
    command, src, dst = argv[0], Path(argv[1]), Path(argv[2])
    if not src.is_dir():
        print(f"{command}: {src} is not a directory", file=sys.stderr)
        return 2
    n = archive(src, dst) if command == "archive" else restore(src, dst)
    print(f"{command}: {n} files {src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
