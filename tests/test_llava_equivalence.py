"""LLaVA is the special case S = {(L_v - 1, 1)}: a converted HF LLaVA model must match it exactly."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from conftest import M_V, image_batch, make_processor, randomise_gates, tiny_llava
from sparsecut.convert import from_hf_llava, init_from_llava
from sparsecut.model import adapter_key


def _inputs(model, text_type):
    processor = make_processor(model.config)
    batch = image_batch(processor, ["What colour is the square?", "How many?"])  # different lengths: left padding
    assert batch["attention_mask"][1].min() == 0  # the shorter prompt really is padded
    return batch


@pytest.mark.parametrize("text_type", ["llama", "qwen2"])
def test_from_hf_llava_logits_and_generate_match(text_type):
    llava = tiny_llava(text_type)
    model = from_hf_llava(llava)
    assert model.config.mode == "llava" and model.config.shortcut_pairs == [(5, 1)]
    batch = _inputs(model, text_type)
    low_res = batch["pixel_values"][:, 0]  # (B, 3, H, W), the view HF LLaVA takes
    with torch.no_grad():
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=low_res).logits
        ours = model(**batch).logits
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref_ids = llava.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=low_res, **kwargs)
    our_ids = model.generate(**batch, **kwargs)
    assert torch.equal(ref_ids, our_ids)


def test_from_hf_llava_matches_in_bf16(tmp_path):
    """Loaded in bf16, HF keeps the rotary inv_freq buffer in fp32; the conversion must too (not cast it), so the
    converted model's logits are bitwise LLaVA's."""
    tiny_llava("llama").save_pretrained(tmp_path)
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    model = from_hf_llava(llava)
    assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    batch = _inputs(model, "llama")
    pixels = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels[:, 0]).logits
        ours = model(**{**batch, "pixel_values": pixels}).logits
    assert torch.equal(ours, ref)


def test_from_hf_llava_loads_a_saved_folder(tmp_path):
    llava = tiny_llava()
    llava.save_pretrained(tmp_path)
    model = from_hf_llava(str(tmp_path))
    batch = _inputs(model, "llama")
    with torch.no_grad():
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:, 0]).logits
        assert torch.allclose(model(**batch).logits, ref, atol=1e-5, rtol=0)


def test_from_hf_llava_rejects_other_folders(tmp_path):
    with pytest.raises(Exception):
        from_hf_llava(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        from_hf_llava(42)


@pytest.mark.parametrize("pattern", ["sparse-uniform", "sparse-bottom", "deepstack"])
def test_init_from_llava_starts_as_llava(pattern):
    """Every adapter MLP seeded with the projector; extra shortcuts gated at 0; attention output at 0."""
    llava = tiny_llava()
    model = init_from_llava(llava, pattern=pattern, high_res=True)
    assert len(model.config.shortcuts) > 1 and model.config.high_res
    processor = make_processor(model.config)
    batch = image_batch(processor, ["Is it red?", "Where?"])
    with torch.no_grad():
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:, 0]).logits
        assert (model(**batch).logits - ref).abs().max().item() <= 1e-5
        projector = llava.model.multi_modal_projector.linear_1.weight
        for adapter in model.model.adapters.values():
            assert torch.equal(adapter.mlp.linear_1.weight, projector)
        randomise_gates(model)  # once the extra shortcuts open up, the answer changes
        assert (model(**batch).logits - ref).abs().max().item() > 1e-3
    assert M_V == model.config.image_seq_length


def test_init_from_llava_other_patterns_open_their_input_shortcut_only():
    model = init_from_llava(tiny_llava(), pattern="dense-uniform", high_res=False)
    assert model.config.primary_shortcut == (6, 1)  # dense patterns start from every ViT layer, the last included
    open_ = [key for key, adapter in model.model.adapters.items() if adapter.gate is None]
    assert open_ == ["vit6_llm1"]
    assert all(float(a.gate.abs().max()) == 0 for a in model.model.adapters.values() if a.gate is not None)


def test_init_from_llava_with_stacked_crops_starts_as_llava():
    """With the ``stack`` fusion the first layer is (1 + g^2) Dv wide: the projector seeds the fused token's block,
    the crop blocks start at 0, so the model still computes LLaVA's logits until training moves them."""
    llava = tiny_llava()
    model = init_from_llava(llava, pattern="sparse-uniform", high_res=True, high_res_fusion="stack")
    processor = make_processor(model.config)
    batch = image_batch(processor, ["Is it red?", "Where?"])
    projector = llava.model.multi_modal_projector.linear_1.weight
    d_v = projector.shape[1]
    with torch.no_grad():
        for adapter in model.model.adapters.values():
            weight = adapter.mlp.linear_1.weight
            assert weight.shape == (projector.shape[0], d_v * (1 + model.config.high_res_grid**2))
            assert torch.equal(weight[:, :d_v], projector) and not weight[:, d_v:].any()
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:, 0]).logits
        assert (model(**batch).logits - ref).abs().max().item() <= 1e-5
        primary = model.model.adapters[adapter_key(model.config.primary_shortcut)]
        primary.mlp.linear_1.weight[:, d_v:].normal_(std=0.5)  # once the crop blocks learn, the crops are seen
        assert (model(**batch).logits - ref).abs().max().item() > 1e-3
