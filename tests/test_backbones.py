"""from_backbones: the paper's starting point, a pretrained tower and LLM with fresh adapters."""

import torch
from transformers import AutoModel, AutoModelForCausalLM

from conftest import image_batch
from sparsecut.convert import from_backbones


def test_from_backbones_keeps_pretrained_weights_and_adds_the_image_token(tiny_backbones):
    model, processor = from_backbones(tiny_backbones["vision"], tiny_backbones["text"], pattern="sparse-uniform", num_shortcuts=3)
    lm = AutoModelForCausalLM.from_pretrained(tiny_backbones["text"]).eval()
    tower = AutoModel.from_pretrained(tiny_backbones["vision"])
    model.eval()
    assert processor.image_token_id == model.config.image_token_id == lm.config.vocab_size  # one new row
    assert model.get_input_embeddings().num_embeddings == lm.config.vocab_size + 1
    for name, value in tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    text = processor(text=[processor.prompt("Hello there", with_image=False)])
    with torch.no_grad():
        ours = model(**text).logits[..., : lm.config.vocab_size]
        ref = lm(**text).logits
    assert torch.allclose(ours, ref, atol=1e-6)
    batch = image_batch(processor, ["What is it?"])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    assert model.config.shortcut_pairs == [(1, 6), (3, 3), (5, 1)]
