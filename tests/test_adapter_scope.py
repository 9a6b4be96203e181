"""The adapters' local cross-attention scope: each low-res token attends only to the high-res tokens of its region."""

from __future__ import annotations

import pytest
import torch

from conftest import image_batch, make_model, make_processor, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.adapter import AdapterAttention, local_attention_mask


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
    mask = local_attention_mask(side, grid, with_low=False)
    assert mask.shape == (side * side, grid * grid * side * side)
    assert mask.sum(0).tolist() == [1] * mask.shape[1]  # every high-res token belongs to one region
    assert {m: mask[m].nonzero().flatten().tolist() for m in range(side * side)} == _region_keys(side, grid)
    with_low = local_attention_mask(side, grid, with_low=True)
    assert torch.equal(with_low[:, : side * side], torch.eye(side * side, dtype=torch.bool))
    assert torch.equal(with_low[:, side * side:], mask)


def test_the_centre_cell_of_a_3x3_grid_looks_into_all_four_crops():
    # the 2 x 2 high-res block under the centre: crop 0's bottom-right, crop 1's bottom-left, crop 2's top-right,
    # crop 3's top-left token (9 tokens a crop)
    assert local_attention_mask(3, 2, with_low=False)[4].nonzero().flatten().tolist() == [8, 9 + 6, 18 + 2, 27 + 0]


def test_masked_attention_equals_attention_over_each_region_alone():
    torch.manual_seed(0)
    attention = AdapterAttention(32, 4).eval()
    torch.nn.init.normal_(attention.o_proj.weight, std=0.2)
    low, high = torch.randn(2, 9, 32), torch.randn(2, 36, 32)
    mask = local_attention_mask(3, 2, with_low=False)
    with torch.no_grad():
        fused, _ = attention(low, high, mask=mask)
        explicit, weights = attention(low, high, output_attentions=True, mask=mask)
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
