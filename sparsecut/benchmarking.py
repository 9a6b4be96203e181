"""What every benchmark here shares (``analysis.bench``, ``app.bench``, ``training.bench``): the machine it ran on,
interleaved timing with medians and quartiles, and the JSON report."""

from __future__ import annotations

import json
import platform
import resource
import time

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine(device: torch.device) -> dict:
    """Which device, threads and torch a benchmark ran on."""
    return {"device": device_name(device), "device_type": device.type, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def peak_memory_gb(device: torch.device) -> float:
    """The GPU's peak allocated memory, or on a CPU the whole process's peak RSS (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(calls: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each named callable: ``warmup + repeats`` rounds, each round calling every callable
    once, the order rotated from round to round; the warm-up rounds are dropped."""
    names = list(calls)
    times = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            started = time.perf_counter()
            calls[name]()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def summary(seconds: list[float]) -> dict:
    """Median and quartiles in milliseconds."""
    q1, median, q3 = np.percentile(np.asarray(seconds) * 1e3, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3), "repeats": len(seconds)}


def write_json(path: str | None, result) -> None:
    """``result`` as indented JSON at ``path`` (nothing when ``path`` is None: the CLIs' optional ``--json``)."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
