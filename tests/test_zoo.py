"""sparsecut.zoo: a compact family in assets/ (shared tower once, fp16) that loads by name."""

import os

import pytest
import torch

from conftest import image_batch, make_model, make_processor, randomise_gates
from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor, zoo


@pytest.fixture
def family(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECUT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    a = make_model(seed=1)
    b = make_model(seed=2, pattern="llava", num_shortcuts=None, high_res=False, adapter_attention=False)
    b.model.vision_tower.load_state_dict(a.model.vision_tower.state_dict())
    randomise_gates(a)
    processor = make_processor(a.config)
    zoo.export_family({"tiny-a": a, "tiny-b": b}, processor, str(tmp_path / "assets" / "tiny"), card="# card\n")
    return {"tiny-a": a, "tiny-b": b, "processor": processor, "root": tmp_path}


def test_shipped_models_load_by_name_with_fp16_weights(family):
    assert zoo.available().keys() == {"tiny-a", "tiny-b"}
    for name in ("tiny-a", "tiny-b"):
        loaded = SparseCutForConditionalGeneration.from_pretrained(name).eval()
        original = family[name]
        reference = SparseCutForConditionalGeneration(original.config).eval()
        reference.load_state_dict({k: v.half().float() for k, v in original.state_dict().items()})
        batch = image_batch(SparseCutProcessor.from_pretrained(name), ["What?"])
        with torch.no_grad():
            assert loaded.dtype == torch.float32
            assert torch.allclose(loaded(**batch).logits, reference(**batch).logits, atol=1e-5)
        assert loaded.config.shortcut_pairs == original.config.shortcut_pairs
        assert SparseCutProcessor.from_pretrained(name).high_res == original.config.high_res  # per-member settings


def test_the_vision_tower_is_stored_once(family):
    root = family["root"] / "assets" / "tiny"
    tower_bytes = sum(p.numel() * 2 for p in family["tiny-a"].model.vision_tower.parameters())
    assert 0 <= os.path.getsize(root / "shared" / "vision.safetensors") - tower_bytes < 20_000  # fp16 + header
    for name in ("tiny-a", "tiny-b"):
        member = os.path.getsize(root / "models" / name / "model.safetensors")
        total = sum(p.numel() * 2 for p in family[name].parameters())
        assert member < total - tower_bytes + 20_000  # + the safetensors header
    assert (root / "MODEL_CARD.md").read_text() == "# card\n"
    assert (root / "shared" / "tokenizer.json").exists() and not (root / "models" / "tiny-a" / "tokenizer.json").exists()


def test_resolve_caches_and_rejects_unknown_names(family):
    first = zoo.resolve("tiny-a")
    assert zoo.resolve("tiny-a") == first and os.path.isfile(os.path.join(first, "model.safetensors"))
    with pytest.raises(ValueError, match="Unknown model 'nope'; shipped models: tiny-a, tiny-b"):
        zoo.resolve("nope")
    b = family["tiny-b"]
    b.model.vision_tower.embeddings.patch_embedding.weight.data += 1
    with pytest.raises(ValueError, match="vision tower differs"):
        zoo.export_family({"x": family["tiny-a"], "y": b}, family["processor"], str(family["root"] / "other"))
