"""SparseCutConfig: defaults, derived fields, validation errors, JSON round-trip."""

import pytest

from conftest import sparsecut_config, text_config, vision_config
from sparsecut import SparseCutConfig


def test_defaults_and_derived_fields():
    config = sparsecut_config()
    assert config.shortcut_pairs == [(1, 6), (3, 3), (5, 1)]
    assert config.image_seq_length == 16 and config.num_views == 5 and config.num_image_tokens == 16
    assert config.adapter_num_heads == 4 and config.vision_feature_select_strategy == "default"
    assert config.mode == "sparsecut"
    siglip = sparsecut_config(vision_type="siglip_vision_model")
    assert siglip.vision_feature_select_strategy == "full" and siglip.image_seq_length == 16
    full_clip = sparsecut_config(vision_feature_select_strategy="full")
    assert full_clip.image_seq_length == 17  # CLS kept


def test_modes():
    assert sparsecut_config(pattern="llava", num_shortcuts=None, high_res=False, adapter_attention=False).mode == "llava"
    assert sparsecut_config(high_res_fusion="concat").mode == "concat"
    assert sparsecut_config(high_res_fusion="concat").num_image_tokens == 80


def test_paper_default_shape():
    config = SparseCutConfig(
        vision_config=dict(model_type="clip_vision_model", num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                           num_attention_heads=16, image_size=336, patch_size=14),
        text_config=dict(model_type="llama", num_hidden_layers=32),
    )
    assert config.image_seq_length == 576 and config.pattern == "sparse-uniform"
    assert config.shortcut_pairs[-1] == (23, 1) and len(config.shortcuts) == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(shortcuts=[[7, 1]]), "ViT layer 7 is out of range"),
        (dict(shortcuts=[[5, 9]]), "LLM layer 9 is out of range"),
        (dict(shortcuts=[[5, 1], [5, 1]]), "appears twice"),
        (dict(shortcuts=[]), "empty pattern"),
        (dict(pattern="diagonal"), "Unknown shortcut pattern"),
        (dict(high_res_grid=0), "high_res_grid must be an integer >= 1"),
        (dict(high_res_grid=1), "needs high_res_grid >= 2"),
        (dict(high_res_grid=2.5), "high_res_grid must be an integer"),
        (dict(adapter_mlp="mlp3x"), "adapter_mlp must be one of"),
        (dict(adapter_kv_source="text"), "adapter_kv_source must be one of"),
        (dict(adapter_attention_scope="window"), "adapter_attention_scope must be one of"),
        (dict(high_res_fusion="sum"), "high_res_fusion must be one of"),
        (dict(adapter_num_heads=5), "must divide the vision hidden size 32"),
        (dict(image_seq_length=10), "does not match the vision tower"),
    ],
)
def test_validation_errors(overrides, message):
    fields = dict(num_shortcuts=None) if "shortcuts" in overrides else {}
    with pytest.raises(ValueError, match=message):
        sparsecut_config(**{**fields, **overrides})


def test_vision_tower_must_be_clip_or_siglip():
    with pytest.raises(ValueError, match="vision_config must be one of"):
        SparseCutConfig(vision_config=dict(model_type="vit"), text_config=text_config())


def test_json_round_trip(tmp_path):
    config = sparsecut_config(text_type="qwen2", pattern="sparse-bottom", high_res_grid=3, adapter_kv_source="low+high")
    config.save_pretrained(tmp_path)
    loaded = SparseCutConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "qwen2" and loaded.tie_word_embeddings
    assert loaded.vision_config.to_dict() == SparseCutConfig(vision_config=vision_config(), text_config=text_config()).vision_config.to_dict()
