"""Timing (device-synchronised wall clock, medians) and peak memory of this process."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()`` (device synchronised before and after; GC run first, untimed)."""
    gc.collect()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and all samples (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(t, 6) for t in times],
    }


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``), where possible."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of this process from a starting point on.

    CPU: the kernel's resident-set high-water mark (``VmHWM``), reset by writing ``5`` to
    ``/proc/self/clear_refs`` so the model-loading transient is not counted; where that is not
    possible, ``resource.getrusage(...).ru_maxrss`` (peak since process start). CUDA:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline_mib = 0.0

    def reset(self) -> None:
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mib = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            self.method = "VmHWM (peak RSS) after resetting it via /proc/self/clear_refs"
        except OSError:
            self.method = "ru_maxrss (peak RSS since process start; reset not possible)"
        rss = _proc_status_kib("VmRSS")
        self.baseline_mib = (rss or 0) / 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _proc_status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        if hwm is not None:
            return hwm / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
