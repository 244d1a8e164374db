"""The machine a benchmark ran on, in one line (every benchmark report states it)."""

from __future__ import annotations

import platform
from pathlib import Path


def machine_description() -> str:
    """CPU model, usable cores, memory and torch version, e.g. for benchmark reports."""
    import os

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{model}, {cores} cores{mem}{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
