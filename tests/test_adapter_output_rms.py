"""The adapters' optional output normalisation (config ``adapter_output_rms``): visual tokens enter the LLM at a
chosen scale, such as that of its text embeddings, instead of the tower's."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.convert import from_backbones


def _rms(z: torch.Tensor) -> torch.Tensor:
    return z.square().mean(-1).sqrt()


def test_every_adapter_output_starts_at_the_scale_asked_for_and_round_trips(tmp_path):
    model = make_model(adapter_output_rms=0.05)
    randomise_gates(model)  # extra shortcuts: gate * w * RMSNorm(z), the gate (non-zero now) applied last
    fused = 40 * torch.randn(2, 4, model.config.vision_config.hidden_size)  # a raw ViT state's size, not unit
    for adapter in model.model.adapters.values():
        z = adapter.project(fused)
        ungated = z / adapter.gate if adapter.gate is not None else z
        torch.testing.assert_close(_rms(ungated), torch.full((2, 4), 0.05), rtol=1e-4, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.adapter_output_rms == 0.05
    for key, adapter in model.model.adapters.items():
        assert torch.equal(loaded.model.adapters[key].output_norm.weight, adapter.output_norm.weight)


def test_without_it_the_adapters_are_the_papers():
    model = make_model()
    assert model.config.adapter_output_rms is None
    assert all(adapter.output_norm is None for adapter in model.model.adapters.values())


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_scale_that_is_not_positive_is_refused(bad):
    with pytest.raises(ValueError, match="adapter_output_rms is the scale adapter outputs start at"):
        sparsecut_config(adapter_output_rms=bad)


def test_from_backbones_can_start_it_at_the_llms_embedding_scale(tiny_backbones):
    model, _ = from_backbones(tiny_backbones["vision"], tiny_backbones["text"], pattern="sparse-uniform", num_shortcuts=2,
                              adapter_output_rms="embeddings")
    embeddings = model.get_input_embeddings().weight
    assert model.config.adapter_output_rms == pytest.approx(float(_rms(embeddings.flatten())))
    adapter = model.model.adapters[next(iter(model.model.adapters))]
    assert torch.allclose(adapter.output_norm.weight, torch.full_like(adapter.output_norm.weight, model.config.adapter_output_rms))
