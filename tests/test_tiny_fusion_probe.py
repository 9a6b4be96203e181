"""python -m training.tiny.fusion_probe: where the text cell's query looks, measured on attention whose result is known."""

import pytest
import torch

from conftest import text_config
from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration
from sparsecut.evaluation.synthetic.dataset import scene_for
from sparsecut.evaluation.synthetic.scenes import layout_named
from training.tiny.fusion_probe import POSITIONS, fusion_probe, glyph_token_mask

LAYOUT = layout_named("cells-96")  # 48-px low-res view, 16-px patches: one token per grid cell


def _uniform_attention_model(scope: str, high_res: bool = True) -> SparseCutForConditionalGeneration:
    """A random model on 48-px views whose adapters' queries are all zero: every allowed key gets the same weight."""
    torch.manual_seed(0)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, image_size=48, patch_size=16)
    config = SparseCutConfig(vision_config=vision, text_config=text_config(), image_token_id=127, pattern="sparse-uniform",
                             num_shortcuts=2, high_res=high_res, adapter_attention_scope=scope, adapter_mlp="linear")
    model = SparseCutForConditionalGeneration(config).eval()
    with torch.no_grad():
        for adapter in model.model.adapters.values():
            adapter.attention.q_proj.weight.zero_()
            adapter.attention.q_proj.bias.zero_()
    return model


def _texts(scenes: int):
    return [s for s in (scene_for(7_000, i, layout=LAYOUT)[0] for i in range(scenes)) if s.text is not None and s.text.legible]


def test_uniform_attention_puts_the_glyph_tokens_share_on_them():
    scenes = 160
    glyphs = torch.stack([glyph_token_mask(s, 3) for s in _texts(scenes)]).float()  # (S, 36)
    wide = fusion_probe(_uniform_attention_model("global"), LAYOUT, scenes=scenes)
    local = fusion_probe(_uniform_attention_model("local"), LAYOUT, scenes=scenes)
    assert wide["texts"] == local["texts"] == len(glyphs) >= 50
    for key in wide["adapters"]:
        # global: 1/36 each, so the glyph tokens' share; local: 1/4 each over the text cell's 2 x 2 high-res tokens,
        # which hold every glyph of the text (it is drawn inside its cell)
        assert wide["adapters"][key]["attention_on_glyphs"] == pytest.approx(float(glyphs.mean(1).mean()), abs=1e-5)
        assert local["adapters"][key]["attention_on_glyphs"] == pytest.approx(float((glyphs.sum(1) / 4).mean()), abs=1e-5)
        assert wide["adapters"][key]["uniform_share"] == pytest.approx(float(glyphs.mean(1).mean()))
        assert wide["adapters"][key]["fusion_ratio"] == 0  # an untrained adapter's attention adds nothing (o_proj 0)
        accuracy = local["adapters"][key]["accuracy"]
        assert set(accuracy) == {"low", "fused", "injected", "all tokens"}
        assert all(len(v) == POSITIONS and all(0 <= a <= 1 for a in v) for v in accuracy.values())


def test_each_text_glyph_is_marked_in_the_crop_holding_it():
    for scene in _texts(40):
        mask = glyph_token_mask(scene, 3)
        assert 1 <= int(mask.sum()) <= len(scene.text.text)  # a 16-px token holds up to two 8-px glyphs side by side


def test_a_member_without_cross_attention_fusion_is_refused():
    with pytest.raises(ValueError, match="no cross-attention fusion"):
        fusion_probe(_uniform_attention_model("global", high_res=False), LAYOUT, scenes=60)
