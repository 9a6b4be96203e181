"""bf16 on the CPU: whether this CPU has it, and whether it is faster for a given piece of work (measured, not assumed).

CPUs with AVX-512 bf16 or AMX run bf16 matrix products several times faster than fp32; older ones emulate bf16
and are slower. Small models gain nothing either way. So the choice is made by timing the actual work both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

MARGIN = 1.2  # bf16 is chosen only when at least this much faster: small gains are noise and cost accuracy


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX-512 bf16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def best_time(work: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``work``, after one untimed warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def bf16_speedup(fp32_work: Callable[[], object], bf16_work: Callable[[], object], repeats: int = 3) -> float:
    """fp32 time / bf16 time of the same work (> 1: bf16 is faster)."""
    return best_time(fp32_work, repeats) / best_time(bf16_work, repeats)


def autocast_step_speedup(model: torch.nn.Module, inputs: dict, repeats: int = 2) -> float:
    """How much faster one training step (forward + backward, fp32 weights) of ``model`` on ``inputs`` runs under
    ``torch.autocast("cpu", bfloat16)`` than in fp32. Gradients are cleared afterwards; weights are not changed."""

    def step(bf16: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(**inputs)
            logits = out.logits if hasattr(out, "logits") else out
            logits.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
        return run

    was_training = model.training
    model.train()
    try:
        return bf16_speedup(step(False), step(True), repeats)
    finally:
        model.train(was_training)
