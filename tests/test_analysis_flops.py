"""analysis.flops: the paper's figures at the LLaVA-1.5-7B shape, exact counts against formulas on a micro model,
caching, errors and the CLI."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import LlavaConfig

from analysis import flops
from analysis.flops import PAPER_FLOPS, forward_flops, load_config, main, paper_count
from sparsecut.presets import PRESETS, preset_config
from sparsecut.patterns import make_pattern


def test_paper_figures_and_context_lengths_at_llava_7b():
    config = preset_config("llava-1.5-7b")
    for mode, reported in PAPER_FLOPS.items():
        assert paper_count(config, mode) == pytest.approx(reported, rel=0.03), mode
    text = 40
    assert forward_flops(config, "concat", text)["context_length"] == 2880 + text
    assert forward_flops(config, "sparsecut", text)["context_length"] == 576 + text
    assert forward_flops(config, "llava", text)["context_length"] == 576 + text


def _micro_expected(text_tokens: int) -> dict:
    """Hand-derived FLOPs (2 per multiply-add) of the micro preset in llava mode, to check the counter and attribution."""
    v, t = PRESETS["micro"].vision, PRESETS["micro"].text
    D, F, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    P = (v["image_size"] // p) ** 2
    S = P + 1  # + CLS
    layer_v = 4 * 2 * S * D * D + 2 * 2 * S * D * F + 4 * S * S * D  # q,k,v,o + fc1,fc2 + QK^T and AV
    vision = 2 * P * (3 * p * p) * D + (v["num_hidden_layers"] - 1) * layer_v  # patch conv + layers up to L_v - 1
    d, f = t["hidden_size"], t["intermediate_size"]
    d_kv = d // t["num_attention_heads"] * t["num_key_value_heads"]
    T = P + text_tokens
    layer_t = 2 * T * (2 * d * d + 2 * d * d_kv) + 3 * 2 * T * d * f + 4 * T * T * d
    return dict(
        vision=vision,
        adapter=2 * P * D * d + 2 * P * d * d,  # LLaVA's two-layer MLP
        llm_body=t["num_hidden_layers"] * layer_t,
        lm_head=2 * T * d * t["vocab_size"],
        context_length=T,
    )


def test_micro_counts_match_formulas_including_attention():
    got = forward_flops(preset_config("micro"), "llava", text_tokens=9)
    expected = _micro_expected(9)
    for key, value in expected.items():
        assert got[key] == value, key
    assert got["total"] == sum(got[k] for k in ("vision", "adapter", "llm_body", "lm_head"))


def test_modes_differ_where_the_architecture_does():
    config = preset_config("micro")
    llava, concat, sparse = (forward_flops(config, m, 5) for m in ("llava", "concat", "sparsecut"))
    M_v = config.image_seq_length
    assert concat["context_length"] == 5 * M_v + 5 and sparse["context_length"] == M_v + 5
    assert sparse["llm_body"] == llava["llm_body"] < concat["llm_body"]
    assert concat["vision"] > llava["vision"]  # five views through the tower
    assert sparse["adapter"] > llava["adapter"]  # cross-attention adapters on every shortcut
    low = forward_flops(preset_config("micro", high_res=False, high_res_grid=1), "concat", 5)
    assert low == llava  # no high-res views: concat is LLaVA


def test_reading_tokens_cost_their_context_and_their_adapter_only_in_sparsecut_mode():
    config = preset_config("micro")
    reading = preset_config("micro", reading_tokens=3)
    plain, read = forward_flops(config, "sparsecut", 5), forward_flops(reading, "sparsecut", 5)
    assert read["context_length"] == plain["context_length"] + 3
    assert read["adapter"] > plain["adapter"] and read["vision"] == plain["vision"]  # the reading layer is tapped anyway
    assert read["llm_body"] > plain["llm_body"]
    for mode in ("llava", "concat"):  # LLaVA's modes have no reading tokens
        assert forward_flops(reading, mode, 5) == forward_flops(config, mode, 5)


def test_cached_results_are_fast_and_not_shared():
    config = preset_config("micro")
    first = forward_flops(config, "sparsecut", 3)
    first["total"] = -1
    started = time.perf_counter()
    again = forward_flops(preset_config("micro"), "sparsecut", 3)
    assert time.perf_counter() - started < 0.05
    assert again["total"] > 0
    assert flops._meta_model.cache_info().currsize >= 1


def test_bad_inputs_raise_clear_errors(tmp_path):
    config = preset_config("micro")
    with pytest.raises(ValueError, match="mode must be one of"):
        forward_flops(config, "dense", 0)
    with pytest.raises(ValueError, match="text_tokens"):
        forward_flops(config, "llava", -1)
    with pytest.raises(TypeError, match="SparseCutConfig"):
        forward_flops(config.to_dict(), "llava", 0)
    with pytest.raises(FileNotFoundError, match="No config"):
        load_config(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert'"):
        load_config(str(tmp_path))
    with pytest.raises(ValueError, match="Unknown preset"):
        preset_config("llava-9b")


def test_cli_json_from_preset_and_from_paths(tmp_path, capsys):
    assert main(["--preset", "micro", "--json", "--text-tokens", "7", "--grid", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["modes"]) == {"llava", "concat", "sparsecut"}
    assert result["modes"]["concat"]["context_length"] == 10 * 16 + 7 and result["high_res_grid"] == 3
    assert result["ratios"]["concat/sparsecut"] == pytest.approx(
        result["modes"]["concat"]["total"] / result["modes"]["sparsecut"]["total"])

    preset_config("micro", pattern="dense-uniform").save_pretrained(tmp_path / "model")
    assert main(["--config", str(tmp_path / "model"), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    dense = make_pattern("dense-uniform", 3, 4)
    assert from_folder["shortcuts"] == ",".join(f"{i}:{j}" for i, j in dense)  # the folder's own pattern
    assert "paper_reported" not in from_folder["modes"]["llava"]

    micro = PRESETS["micro"]
    llava = LlavaConfig(vision_config=micro.vision, text_config=micro.text, image_token_index=micro.image_token_id)
    llava.save_pretrained(tmp_path / "llava")
    assert main(["--config", str(tmp_path / "llava" / "config.json")]) == 0
    table = capsys.readouterr().out
    assert "sparsecut" in table and "paper count" in table

    assert main(["--config", str(tmp_path / "nowhere")]) == 2
    assert "No config" in capsys.readouterr().err


def test_concurrent_calls_count_independently():
    config = preset_config("micro")
    lengths = [21, 22, 23, 24]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: forward_flops(config, "llava", n), lengths))
    for n, got in zip(lengths, results):
        expected = _micro_expected(n)
        assert {k: got[k] for k in expected} == expected
