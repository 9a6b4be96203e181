"""The adapters' local cross-attention scope: each low-res token attends only to the high-res tokens of its region."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import image_batch, make_model, make_processor, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.adapter import AdapterAttention, local_region_index


def _region_keys(side: int, grid: int) -> dict[int, list[int]]:
    """The reference: walk the whole image's (g * side)^2 high-res positions and file each under its low-res token."""
    keys = {m: [] for m in range(side * side)}
    for row in range(grid * side):
        for column in range(grid * side):
            crop = (row // side) * grid + column // side
            key = crop * side * side + (row % side) * side + column % side
            keys[(row // grid) * side + column // grid].append(key)
    return {m: sorted(k) for m, k in keys.items()}


@pytest.mark.parametrize("side,grid", [(3, 2), (4, 2), (2, 3)])
def test_each_low_res_token_sees_exactly_the_high_res_tokens_of_its_region(side, grid):
    mask = local_region_index(side, grid, with_low=False) >= 0
    assert mask.shape == (side * side, grid * grid * side * side)
    assert mask.sum(0).tolist() == [1] * mask.shape[1]  # every high-res token belongs to one region
    assert {m: mask[m].nonzero().flatten().tolist() for m in range(side * side)} == _region_keys(side, grid)
    with_low = local_region_index(side, grid, with_low=True) >= 0
    assert torch.equal(with_low[:, : side * side], torch.eye(side * side, dtype=torch.bool))
    assert torch.equal(with_low[:, side * side:], mask)


def test_the_centre_cell_of_a_3x3_grid_looks_into_all_four_crops():
    # the 2 x 2 high-res block under the centre: crop 0's bottom-right, crop 1's bottom-left, crop 2's top-right,
    # crop 3's top-left token (9 tokens a crop)
    assert (local_region_index(3, 2, with_low=False) >= 0)[4].nonzero().flatten().tolist() == [8, 9 + 6, 18 + 2, 27 + 0]


def test_masked_attention_equals_attention_over_each_region_alone():
    torch.manual_seed(0)
    attention = AdapterAttention(32, 4).eval()
    torch.nn.init.normal_(attention.o_proj.weight, std=0.2)
    low, high = torch.randn(2, 9, 32), torch.randn(2, 36, 32)
    region = local_region_index(3, 2, with_low=False)
    mask = region >= 0
    with torch.no_grad():
        fused, _ = attention(low, high, region=region)
        explicit, weights = attention(low, high, output_attentions=True, region=region)
        for m in range(9):
            alone, _ = attention(low[:, m:m + 1], high[:, mask[m]])
            torch.testing.assert_close(fused[:, m:m + 1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-6)
    assert torch.all(weights[..., ~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))


def test_the_scope_changes_only_what_the_high_res_views_add():
    local = make_model(adapter_attention_scope="local")
    randomise_gates(local)
    wide = SparseCutForConditionalGeneration(sparsecut_config()).eval()
    wide.load_state_dict(local.state_dict())
    batch = image_batch(make_processor(local.config), ["what is written?", "what colour?"])
    with torch.no_grad():
        assert (local(**batch).logits - wide(**batch).logits).abs().max() > 1e-4
        # without crops both attend over the low-res tokens alone, globally
        torch.testing.assert_close(local(**batch, high_res=False).logits, wide(**batch, high_res=False).logits)


def test_a_checkpoint_remembers_its_scope_and_an_explicit_config_ablates_it(tmp_path):
    model = make_model(adapter_attention_scope="local")
    randomise_gates(model)
    model.save_pretrained(tmp_path)
    batch = image_batch(make_processor(model.config), ["what is written?"])
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    ablated = SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config())  # same weights
    assert loaded.config.adapter_attention_scope == "local" and ablated.config.adapter_attention_scope == "global"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        assert (ablated(**batch).logits - model(**batch).logits).abs().max() > 1e-4


def test_local_scope_needs_one_token_per_patch():
    with pytest.raises(ValueError, match="needs one token per patch"):
        sparsecut_config(adapter_attention_scope="local", vision_feature_select_strategy="full")


def test_each_key_gets_its_place_in_the_region():
    index = local_region_index(3, 2, with_low=True)
    # the centre cell: crop 0's bottom-right is its top-left place, then crop 1's bottom-left, crop 2's top-right, ...
    assert [int(index[4, 9 + k]) for k in (8, 15, 20, 27)] == [0, 1, 2, 3]
    assert index[4, 4] == 4 and (index[:, :9] >= 0).sum() == 9  # its own low-res token: place g^2
    assert sorted(index[0][index[0] >= 0].tolist()) == [0, 1, 2, 3, 4]


def test_the_region_bias_starts_each_head_on_one_place_and_is_learned():
    torch.manual_seed(0)
    attention = AdapterAttention(32, 4, region_places=5, region_prior=6.0).eval()
    assert attention.region_bias.tolist() == [[6.0 if p == h else 0.0 for p in range(5)] for h in range(4)]
    low, high = torch.randn(2, 9, 32), torch.randn(2, 36, 32)
    region = local_region_index(3, 2, with_low=False)
    with torch.no_grad():
        attention.q_proj.weight.zero_()
        attention.q_proj.bias.zero_()  # scores = bias alone: head h puts e^6 / (e^6 + 3) on place h
        fused, weights = attention(low, high, output_attentions=True, region=region)
        torch.testing.assert_close(attention(low, high, region=region)[0], fused, rtol=1e-5, atol=1e-6)
    for h in range(4):
        on_place = weights[:, h][:, region == h].reshape(2, 9)  # each query's weight on its place h
        torch.testing.assert_close(on_place, torch.full((2, 9), math.exp(6) / (math.exp(6) + 3)))
    torch.nn.init.normal_(attention.o_proj.weight, std=0.2)
    attention(low, high, region=region)[0].square().sum().backward()
    assert attention.region_bias.grad is not None and attention.region_bias.grad.abs().sum() > 0


def test_a_model_with_a_region_bias_starts_it_at_its_prior_and_round_trips(tmp_path):
    model = make_model(adapter_attention_scope="local", adapter_region_bias=4.0)
    bias = next(iter(model.model.adapters.values())).attention.region_bias
    assert bias[1, 1] == 4.0 and bias[1, 0] == 0.0 and bias.shape == (4, 5)
    model.save_pretrained(tmp_path)
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.adapter_region_bias == 4.0
    assert torch.equal(next(iter(loaded.model.adapters.values())).attention.region_bias, bias)
    with pytest.raises(ValueError, match="needs adapter_attention_scope='local'"):
        sparsecut_config(adapter_region_bias=4.0)
