"""Readers of the paper's benchmarks in their released formats, one module each; ``BENCHMARKS`` maps names to them."""

from . import gqa, mmbench, pope, scienceqa, seedbench, synthetic, textvqa, vizwiz, vqav2
from .base import Benchmark, BenchmarkDataError, Sample

BENCHMARKS: dict[str, Benchmark] = {
    m.BENCHMARK.name: m.BENCHMARK for m in (vqav2, gqa, vizwiz, scienceqa, textvqa, pope, mmbench, seedbench, synthetic)
}

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "Sample"]
