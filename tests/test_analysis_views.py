"""analysis/: probes, contributions, cross-attention, LLM attention, ablation and attributions on tiny models."""

import threading

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from conftest import M_V, make_model, make_processor, one_torch_thread, randomise_gates
from test_model import _llava_mode_copy
from analysis.ablation import shortcut_ablation
from analysis.attributions import integrated_gradients, occlusion, shortcut_attribution
from analysis.contributions import contribution_norms
from analysis.cross_attention import cross_attention
from analysis.grid import TokenGrid
from analysis.inputs import answer_logprobs, prepare
from analysis.llm_attention import llm_attention
from analysis.probes import AdapterOutputs, AttentionRows, LayerInputs

SIDE, GRID = 4, 2  # 16-px views in 4-px patches; 2x2 crops


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def tiny_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 20, 3), dtype=np.uint8))


def eager_model(seed: int = 0, randomise: bool = True, **overrides):
    model = make_model(seed=seed, **overrides)
    if randomise:
        randomise_gates(model)
    model.set_attn_implementation("eager")
    return model


@pytest.fixture(scope="module")
def tiny():
    """sparse-uniform with 3 shortcuts (5:1, 3:3, 1:6), 2x2 high-res crops, every shortcut contributing."""
    model = eager_model()
    processor = make_processor(model.config)
    return model, processor, prepare(model, processor, tiny_image(), "What is it?", max_new_tokens=4)


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_example_holds_prompt_answer_and_the_image_as_seen(tiny):
    model, processor, example = tiny
    assert example.input_ids.shape[1] == example.prompt_length + example.answer_ids.numel()
    assert example.visual_positions.numel() == M_V and example.image.shape == (GRID * 16, GRID * 16, 3)
    assert example.shortcuts == ((5, 1), (3, 3), (1, 6))  # in LLM-layer order
    given = prepare(model, processor, tiny_image(), "What is it?", answer="red")
    assert given.answer == "red" and given.decode(given.answer_ids) == "red"
    with pytest.raises(ValueError, match="image is required"):
        prepare(model, processor, None, "What is it?")
    with pytest.raises(ValueError, match="does not exist"):
        prepare(model, processor, "/no/such/image.png", "What is it?")
    with pytest.raises(ValueError, match="not in this model"):
        prepare(model, processor, tiny_image(), "What is it?", shortcuts="4:2")


def test_token_grid_drops_cls_tokens_and_stitches_crops_row_by_row():
    grid = TokenGrid(side=2, cls=1, crops=2, views=5)  # CLIP, "full" strategy, concat mode: 5 views of 1 + 4 tokens
    maps = grid.context_maps(torch.arange(25))
    assert maps["low-res"].tolist() == [[1, 2], [3, 4]]
    assert maps["high-res"].tolist() == [[6, 7, 11, 12], [8, 9, 13, 14], [16, 17, 21, 22], [18, 19, 23, 24]]
    assert grid.patch_index((1, 0)) == 2 and grid.patch_index(3) == 3
    with pytest.raises(ValueError, match="row, col"):
        grid.patch_index("centre")


def test_concat_mode_maps_every_view_onto_the_image():
    model = eager_model(high_res_fusion="concat")
    example = prepare(model, make_processor(model.config), tiny_image(), "What?", answer="ok")
    assert example.visual_positions.numel() == 5 * M_V and example.grid.views == 5
    contributions = contribution_norms(model, example).maps()
    assert contributions["low-res"].shape == (3, SIDE, SIDE)
    assert contributions["high-res"].shape == (3, GRID * SIDE, GRID * SIDE)
    attention = llm_attention(model, example).maps()
    assert attention["low-res"].shape == (8, SIDE, SIDE)
    assert attention["high-res"].shape == (8, GRID * SIDE, GRID * SIDE)
    shortcuts = shortcut_attribution(model, example, n_steps=2)
    assert shortcuts.maps()["high-res"].shape == (3, GRID * SIDE, GRID * SIDE)
    with pytest.raises(ValueError, match="concat mode"):
        cross_attention(model, example)


def test_probes_leave_logits_unchanged_and_always_remove_their_hooks(tiny):
    model, _, example = tiny
    before = hook_count(model)
    with torch.no_grad():
        reference = model(**example.model_inputs()).logits
        with AdapterOutputs(model) as z, LayerInputs(model) as h, AttentionRows(model, example.answer_rows) as a:
            probed = model(**example.model_inputs()).logits
            assert hook_count(model) > before
    assert torch.equal(probed, reference)
    assert set(z.outputs) == set(example.shortcuts)
    assert sorted(h.inputs) == sorted(a.weights) == list(range(1, 9))
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"), AdapterOutputs(model), LayerInputs(model):
        assert hook_count(model) > before
        raise RuntimeError("boom")
    assert hook_count(model) == before


def test_probes_record_only_calls_from_their_own_thread(tiny):
    model, _, example = tiny

    def other_request():
        with torch.no_grad():
            model(**example.model_inputs())

    with AdapterOutputs(model) as probe:
        thread = threading.Thread(target=other_request)
        thread.start()
        thread.join()
        assert probe.outputs == {}
        with torch.no_grad():
            model(**example.model_inputs())
    assert set(probe.outputs) == set(example.shortcuts)


def test_contribution_norms_equal_a_by_hand_computation(tiny):
    model, _, example = tiny
    result = contribution_norms(model, example)
    inputs = example.model_inputs()
    positions = example.visual_positions
    with torch.no_grad():
        features, _ = model.model.get_shortcut_features(inputs["pixel_values"], inputs["shortcuts"], high_res=True)
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # [0]: layer 1's input; [k]: layer k's output
    for k, (i, j) in enumerate(example.shortcuts):
        stream = hidden[j - 1][0, positions]
        if j > 1:  # deeper shortcuts are added inside the LLM, after layer j - 1's output
            stream = stream + sum(features[s][0] for s in example.shortcuts if s[1] == j)
        torch.testing.assert_close(result.norms[k], features[(i, j)][0].norm(dim=-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(result.stream_norms[k], stream.norm(dim=-1), rtol=0, atol=1e-5)
    assert torch.allclose(result.ratios[0], torch.ones(M_V))  # 5:1 is all that enters layer 1 at the visual tokens
    assert result.maps()["low-res"].shape == (3, SIDE, SIDE)
    fig = result.plotly()
    assert sum(isinstance(t, go.Heatmap) for t in fig.data) == 3 and sum(isinstance(t, go.Bar) for t in fig.data) == 2
    assert len(result.matplotlib().axes) >= 4


def test_cross_attention_rows_sum_to_one_and_maps_cover_the_crops(tiny):
    model, _, example = tiny
    result = cross_attention(model, example)
    for weights in result.attentions.values():
        assert weights.shape == (4, M_V, GRID * GRID * M_V)
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, M_V))
    maps = result.key_maps(patch=(1, 2), head=3)
    assert list(maps) == ["high-res"] and maps["high-res"].shape == (3, GRID * SIDE, GRID * SIDE)
    # crop (0, 1) is the top-right quarter: its token (row 2, col 0) lands at (2, SIDE) on the stitched map
    assert maps["high-res"][0, 2, SIDE] == result.attentions[(5, 1)][3, SIDE + 2, 1 * M_V + 2 * SIDE]
    entropy = result.entropy()
    assert entropy.shape == (3, 4) and bool((entropy <= result.max_entropy + 1e-5).all())
    with pytest.raises(ValueError, match="outside the 4x4"):
        result.key_maps(patch=(4, 0))
    with pytest.raises(ValueError, match="out of range"):
        result.key_maps(patch=16)
    with pytest.raises(ValueError, match="Head 4"):
        result.key_maps(head=4)
    fig = result.plotly(patch=5)
    assert sum(isinstance(t, go.Heatmap) for t in fig.data) == 3 and len(fig.layout.shapes) == 3


def test_cross_attention_with_low_and_high_keys_and_without_attention():
    model = eager_model(adapter_kv_source="low+high")
    processor = make_processor(model.config)
    example = prepare(model, processor, tiny_image(), "Where?", answer="here")
    maps = cross_attention(model, example).key_maps()
    assert maps["low-res"].shape == (3, SIDE, SIDE) and maps["high-res"].shape == (3, GRID * SIDE, GRID * SIDE)
    total = maps["low-res"].sum((1, 2)) + maps["high-res"].sum((1, 2))
    torch.testing.assert_close(total, torch.ones(3))  # one query's row, all of it on the maps
    llava = _llava_mode_copy(model)
    llava_example = prepare(llava, make_processor(llava.config), tiny_image(), "Where?", answer="here")
    with pytest.raises(ValueError, match="no attention block"):
        cross_attention(llava, llava_example)


def test_llm_attention_is_the_models_attention_at_the_answer_rows(tiny):
    model, _, example = tiny
    result = llm_attention(model, example)
    rows = example.answer_rows
    assert result.rows.shape == (8, 4, rows.numel(), example.input_ids.shape[1])
    torch.testing.assert_close(result.rows.sum(-1), torch.ones(result.rows.shape[:-1]))
    with torch.no_grad():
        reference = model(**example.model_inputs(), output_attentions=True).attentions
    for j in range(1, 9):
        assert torch.equal(result.rows[j - 1], reference[j - 1][0][:, rows])
    assert result.maps()["low-res"].shape == (8, SIDE, SIDE) and result.maps(head=1)["low-res"].shape == (8, SIDE, SIDE)
    assert result.shortcut_layers == [1, 3, 6]
    assert bool(((result.visual_share > 0) & (result.visual_share < 1)).all())
    assert sum(isinstance(t, go.Heatmap) for t in result.plotly(layers=[1, 6]).data) == 2


def test_llm_attention_refuses_sdpa_and_leaves_no_hooks():
    model = make_model()
    processor = make_processor(model.config)
    example = prepare(model, processor, tiny_image(), "What?", answer="x")
    before = hook_count(model)
    with pytest.raises(ValueError, match="eager"):
        llm_attention(model, example)
    assert hook_count(model) == before and model.model.language_model.config._attn_implementation == "sdpa"


def test_ablating_all_but_the_llava_shortcut_gives_the_llava_mode_model():
    model = make_model()  # attention outputs stay at 0: the 5:1 adapter is LLaVA's projector
    with torch.no_grad():
        for adapter in model.model.adapters.values():
            if adapter.gate is not None:
                adapter.gate.normal_()
    model.set_attn_implementation("eager")
    example = prepare(model, make_processor(model.config), tiny_image(), "What is it?", max_new_tokens=4)
    llava = _llava_mode_copy(model)
    result = shortcut_ablation(model, example, max_new_tokens=4)
    row = next(r for r in result.rows if r.name == "only 5:1 (LLaVA's) left on")
    assert row.on == ((5, 1),) and set(row.off) == {(3, 3), (1, 6)}
    inputs = example.model_inputs()
    with torch.no_grad():
        ours = model(**{**inputs, "shortcuts": list(row.on)}).logits
        ref = llava(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
        full = model(**inputs).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert (full - ref).abs().max() > 1e-3  # the other shortcuts do change the logits
    ref_logprobs = ref[0, example.answer_rows].log_softmax(-1).gather(-1, example.answer_ids[:, None])[:, 0]
    torch.testing.assert_close(row.token_logprobs, ref_logprobs, rtol=0, atol=1e-5)


def test_ablation_table_sorted_with_deltas_and_answers(tiny):
    model, _, example = tiny
    result = shortcut_ablation(model, example, groups={"deep pair": "3:3,1:6"}, max_new_tokens=4)
    with torch.no_grad():
        assert result.baseline.logprob == pytest.approx(float(answer_logprobs(model, example).sum()), abs=1e-5)
    assert result.baseline.answer == example.answer
    names = [r.name for r in result.rows]
    assert sorted(names) == sorted(["off 5:1", "off 3:3", "off 1:6", "deep pair"])
    deltas = [r.delta for r in result.rows]
    assert deltas == sorted(deltas)
    assert all(r.delta == pytest.approx(r.logprob - result.baseline.logprob) for r in result.rows)
    assert len(result.table()) == 5 and len(result.plotly().data[0].y) == 4
    with pytest.raises(ValueError, match="not in this model"):
        shortcut_ablation(model, example, groups={"bad": "4:2"}, generate=False)
    narrow = prepare(model, example.processor, tiny_image(), "What is it?", answer="x", shortcuts="5:1,3:3")
    with pytest.raises(ValueError, match="not on in this example"):
        shortcut_ablation(model, narrow, groups={"g": "1:6"}, generate=False)


def test_integrated_gradients_are_complete_and_mapped_per_view(tiny):
    model, _, example = tiny
    result = integrated_gradients(model, example, n_steps=8)
    assert result.attributions.shape == (5, 3, 16, 16)
    assert result.maps["low-res"].shape == (16, 16) and result.maps["high-res"].shape == (32, 32)
    with torch.no_grad():
        assert result.score == pytest.approx(float(answer_logprobs(model, example).sum()), abs=1e-5)
    change = result.score - result.baseline_score
    assert abs(float(result.attributions.sum()) - change) <= 0.05 * abs(change)  # completeness, up to integration error
    assert float(result.maps["low-res"].sum()) == pytest.approx(float(result.attributions[0].sum()), abs=1e-6)
    with pytest.raises(ValueError, match="Unknown baseline"):
        integrated_gradients(model, example, n_steps=2, baseline="blurry")
    assert sum(isinstance(t, go.Heatmap) for t in result.plotly().data) == 2


def test_occlusion_of_a_whole_view_is_the_drop_in_log_prob(tiny):
    model, _, example = tiny
    result = occlusion(model, example, window=16, baseline="black")
    statistics = example.processor.image_processor
    black = torch.tensor([(0 - m) / s for m, s in zip(statistics.image_mean, statistics.image_std)])
    occluded = example.pixel_values.clone()
    occluded[0, 0] = black[:, None, None]
    with torch.no_grad():
        drop = answer_logprobs(model, example).sum() - answer_logprobs(model, example, pixel_values=occluded).sum()
    torch.testing.assert_close(result.maps["low-res"], torch.full((16, 16), float(drop)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="window must be 1..16"):
        occlusion(model, example, window=17)


def test_shortcut_attribution_adds_up_to_switching_every_shortcut_off(tiny):
    model, _, example = tiny
    before = hook_count(model)
    result = shortcut_attribution(model, example, n_steps=8)
    assert hook_count(model) == before
    assert result.per_token.shape == (3, M_V) and result.maps()["low-res"].shape == (3, SIDE, SIDE)
    with torch.no_grad():
        all_off = float(answer_logprobs(model, example, shortcuts=[]).sum())
    assert result.baseline_score == pytest.approx(all_off, abs=1e-5)
    change = result.score - result.baseline_score
    assert abs(float(result.totals.sum()) - change) <= 0.05 * abs(change)
    assert len(result.table()) == 3 and sum(isinstance(t, go.Heatmap) for t in result.plotly().data) == 3


def test_views_from_concurrent_threads_match_sequential_runs(tiny):
    model, processor, example = tiny
    narrow = prepare(model, processor, tiny_image(), "What is it?", answer=example.answer, shortcuts="5:1,1:6")
    alone = [contribution_norms(model, e).norms for e in (example, narrow)]
    results, errors = {}, []

    def work(index, ex):
        try:
            results[index] = all(torch.equal(contribution_norms(model, ex).norms, alone[index % 2]) for _ in range(3))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k, (example, narrow)[k % 2])) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == {0: True, 1: True, 2: True, 3: True}
