"""The ``stack`` high-res fusion: each low-res token also carries its region's high-res tokens along its channels."""

from __future__ import annotations

import pytest
import torch

from conftest import image_batch, make_model, make_processor, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.model import CheckpointMismatchError
from sparsecut.adapter import local_region_index, stack_regions


@pytest.mark.parametrize("side,grid", [(3, 2), (4, 2), (2, 3)])
def test_each_token_stacks_its_regions_high_res_tokens_in_place_order(side, grid):
    dim = 2
    high = torch.arange(grid * grid * side * side, dtype=torch.float32)[None, :, None].repeat(1, 1, dim)  # key k -> k
    stacked = stack_regions(high, side, grid)
    assert stacked.shape == (1, side * side, grid * grid * dim)
    index = local_region_index(side, grid, with_low=False)
    for m in range(side * side):  # place p of token m's region holds the key local_region_index files at place p
        keys = [int((index[m] == place).nonzero()) for place in range(grid * grid)]
        assert stacked[0, m].view(grid * grid, dim)[:, 0].tolist() == keys


def test_a_stacked_model_keeps_the_context_and_widens_only_the_adapters_input():
    model = make_model(high_res_fusion="stack")
    randomise_gates(model)
    plain = make_model()
    dim, grid = model.config.vision_config.hidden_size, model.config.high_res_grid
    for key, adapter in model.model.adapters.items():
        assert adapter.mlp.linear_1.in_features == (1 + grid**2) * dim
        assert plain.model.adapters[key].mlp.linear_1.in_features == dim
    processor = make_processor(model.config)
    assert processor.tokens_per_image(True) == model.config.image_seq_length  # the context does not grow
    batch = image_batch(processor, ["what is written?", "what colour?"])
    with torch.no_grad():
        full = model(**batch).logits
        assert torch.isfinite(full).all()
        # the crops reach the answer only through the stacked channels and eq. 2's attention: without them, zeros
        assert (full - model(**batch, high_res=False).logits).abs().max() > 1e-4


def test_without_crops_the_stacked_channels_are_zero():
    model = make_model(high_res_fusion="stack")
    adapter = next(iter(model.model.adapters.values()))
    low = torch.randn(2, model.config.image_seq_length, model.config.vision_config.hidden_size)
    fused, _ = adapter.fuse(low, None)
    assert fused.shape[-1] == (1 + model.config.high_res_grid**2) * low.shape[-1]
    assert torch.all(fused[..., low.shape[-1]:] == 0)


def test_a_stacked_checkpoint_round_trips_and_refuses_a_plain_config(tmp_path):
    """A plain config over a stacked checkpoint is refused by name (the adapters' input widths differ)."""
    model = make_model(high_res_fusion="stack")
    randomise_gates(model)
    model.save_pretrained(tmp_path)
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.high_res_fusion == "stack"
    batch = image_batch(make_processor(model.config), ["what is written?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(CheckpointMismatchError, match="high_res_fusion: checkpoint has stack, requested cross-attention"):
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config())
    with pytest.raises(ValueError, match="high_res_fusion must be one of 'cross-attention', 'concat', 'stack'"):
        make_model(high_res_fusion="stacked")


def test_stacking_needs_one_token_per_patch():
    with pytest.raises(ValueError, match="high_res_fusion='stack' needs one token per patch"):
        sparsecut_config(high_res_fusion="stack", vision_feature_select_strategy="full")
