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


class ForwardTimes:
    """Where one generation's time goes: while active (``with``), the wall-clock start and end of every top-level
    forward call of ``model`` (in ``generate``: the prefill, then one call per new token) and the seconds spent in
    each named part, summed per top-level call: a part is a list of submodules that do not contain one another (e.g.
    a vision tower's embeddings and encoder layers, which SparseCut calls one by one)."""

    def __init__(self, model: torch.nn.Module, parts: dict[str, list[torch.nn.Module]], device: torch.device):
        self.model, self.parts, self.device = model, parts, device
        self.calls: list[tuple[float, float]] = []  # (start, end) per top-level forward, perf_counter seconds
        self.part_seconds: list[dict[str, float]] = []  # per top-level forward: {part: seconds}
        self._handles: list = []

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def __enter__(self) -> ForwardTimes:
        def model_started(module, args):
            self.calls.append((self._now(), float("nan")))
            self.part_seconds.append(dict.fromkeys(self.parts, 0.0))

        def model_ended(module, args, output):
            self.calls[-1] = (self.calls[-1][0], self._now())

        self._handles = [self.model.register_forward_pre_hook(model_started),
                         self.model.register_forward_hook(model_ended)]
        for name, modules in self.parts.items():
            for module in modules:
                started: list[float] = []
                self._handles += [module.register_forward_pre_hook(lambda m, a, s=started: s.append(self._now())),
                                  module.register_forward_hook(lambda m, a, o, s=started, n=name: self._add(n, s.pop()))]
        return self

    def _add(self, part: str, started: float) -> None:
        if self.part_seconds:  # a part called outside the model's forward is not counted
            self.part_seconds[-1][part] += self._now() - started

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
