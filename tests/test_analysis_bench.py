"""analysis.bench: the quick mode runs every part on the micro preset and its JSON is consistent (not a timed test)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from analysis.bench import main
from sparsecut.benchmarking import interleaved, summary


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    argv = ["--preset", "micro", "--quick", "--device", "cpu", "--dtype", "float32", "--threads", "1", "--text-tokens", "8",
            "--peak-tflops", "1", "--json", str(folder / "bench.json"), "--plots", str(folder / "plots")]
    assert main(argv) == 0
    with open(folder / "bench.json", encoding="utf-8") as handle:
        return json.load(handle)


def _sane(entry: dict) -> None:
    assert 0 < entry["q1_ms"] <= entry["median_ms"] <= entry["q3_ms"]
    assert entry["repeats"] == 3


def test_prefill_modes_contexts_and_ratios(quick_run):
    prefill = quick_run["prefill"]
    modes = prefill["modes"]
    for entry in modes.values():
        _sane(entry)
        assert entry["peak_memory_mib"] is None  # not measured on the CPU
    M_v = 16
    assert modes["llava"]["context_length"] == modes["sparsecut"]["context_length"] == M_v + 8
    assert modes["concat"]["context_length"] == 5 * M_v + 8
    assert prefill["ratios"]["sparsecut/llava"] == pytest.approx(modes["sparsecut"]["median_ms"] / modes["llava"]["median_ms"])
    assert prefill["ratios"]["concat/sparsecut"] == pytest.approx(modes["concat"]["median_ms"] / modes["sparsecut"]["median_ms"])
    assert modes["concat"]["flops"] > modes["sparsecut"]["flops"] > modes["llava"]["flops"]
    assert prefill["flops_ratios"]["concat/sparsecut"] == pytest.approx(modes["concat"]["flops"] / modes["sparsecut"]["flops"])


def test_overhead_compares_identical_weights(quick_run):
    hf = quick_run["overhead"]["hf_llava"]
    assert hf["max_logit_difference"] < 1e-5  # the converted model computes what HF LLaVA does
    assert hf["ratio"] == pytest.approx(hf["llava"]["median_ms"] / hf["hf"]["median_ms"])
    injection = quick_run["overhead"]["injection"]
    _sane(injection["with_injection"])
    difference = injection["difference"]
    assert difference["q1_ms"] <= difference["median_ms"] <= difference["q3_ms"]
    assert injection["share"] == pytest.approx(difference["median_ms"] / injection["with_injection"]["median_ms"])
    assert injection["shortcuts"] == 2


def test_generation_and_training_rows(quick_run):
    rows = quick_run["generation"]
    assert {(r["mode"], r["batch"]) for r in rows} == {(m, b) for m in ("llava", "concat", "sparsecut") for b in (1, 2)}
    for r in rows:
        assert r["time_to_first_token_ms"] > 0 and r["tokens_per_s"] > 0 and r["new_tokens"] == 3
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 3 / (r["generate"]["median_ms"] / 1e3))
    stages = quick_run["training"]
    assert [r["stage"] for r in stages] == [1, 2]
    for r in stages:
        assert r["step_s"] > 0 and r["model_flops_per_step"] > 0
        assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / r["step_s"] / 1e12)
    assert stages[1]["model_flops_per_step"] > stages[0]["model_flops_per_step"]  # longer text, LLM trained


def test_scaling_plots_and_targets(quick_run):
    shortcuts = quick_run["scaling"]["shortcuts"]
    assert [r["shortcuts"] for r in shortcuts] == [1, 2, 3]  # sparse-uniform 1, 2 (= L_v - 1), then dense (3)
    flops = [r["flops"] for r in shortcuts]
    assert flops == sorted(flops) and flops[0] < flops[-1]
    grid = {(r["mode"], r["grid"]): r for r in quick_run["scaling"]["grid"]}
    for g in (1, 2, 3):
        assert grid[("concat", g)]["context_length"] == (1 + g * g if g > 1 else 1) * 16 + 8
        assert grid[("sparsecut", g)]["context_length"] == 16 + 8
        _sane(grid[("sparsecut", g)])
    assert grid[("concat", 1)]["flops"] < grid[("concat", 3)]["flops"]
    assert len(quick_run["plots"]) == 2 and all(os.path.getsize(p) > 1000 for p in quick_run["plots"])
    targets = quick_run["targets"]
    assert [t["target"] for t in targets][:2] == ["prefill sparsecut/llava", "prefill concat/sparsecut"]
    assert all(isinstance(t["met"], bool) for t in targets) and len(targets) == 4
    assert quick_run["machine"]["threads"] == 1


def test_interleaved_rotates_the_order_and_drops_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved(fns, repeats=2, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}
    assert summary([0.001, 0.002, 0.003])["median_ms"] == pytest.approx(2.0)


def test_bad_arguments_exit():
    with pytest.raises(SystemExit):
        main(["--preset", "micro", "--repeats", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--preset", "micro", "--device", "cuda"])
