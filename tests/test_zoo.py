"""sparsecut.zoo: a compact family in assets/ (shared tower once, fp16) that loads by name."""

import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import image_batch, make_model, make_processor, randomise_gates
from sparsecut import SparseCutForConditionalGeneration, SparseCutProcessor, zoo
from sparsecut.base_models import BASE_MODELS
from sparsecut.convert import from_backbones
from training.tiny.export import export_family
from training.trainer import add_lora


@pytest.fixture
def family(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECUT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    a = make_model(seed=1)
    b = make_model(seed=2, pattern="llava", num_shortcuts=None, high_res=False, adapter_attention=False)
    b.model.vision_tower.load_state_dict(a.model.vision_tower.state_dict())
    randomise_gates(a)
    processor = make_processor(a.config)
    export_family({"tiny-a": a, "tiny-b": b}, processor, str(tmp_path / "assets" / "tiny"), card="# card\n")
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


def test_a_re_exported_member_keeps_its_place_in_the_family(family):
    root = family["root"] / "assets" / "tiny"
    stayed = export_family({"tiny-a": family["tiny-a"]}, family["processor"], str(root))
    assert stayed == ["tiny-b"] and list(zoo.manifest(str(root))["models"]) == ["tiny-a", "tiny-b"]
    export_family({"tiny-c": family["tiny-a"]}, family["processor"], str(root))  # a new one joins at the end
    assert list(zoo.manifest(str(root))["models"]) == ["tiny-a", "tiny-b", "tiny-c"]


def test_resolve_caches_and_rejects_unknown_names(family):
    first = zoo.resolve("tiny-a")
    assert zoo.resolve("tiny-a") == first and os.path.isfile(os.path.join(first, "model.safetensors"))
    with pytest.raises(ValueError, match="Unknown model 'nope'; shipped models: tiny-a, tiny-b"):
        zoo.resolve("nope")
    b = family["tiny-b"]
    b.model.vision_tower.embeddings.patch_embedding.weight.data += 1
    with pytest.raises(ValueError, match="vision tower differs"):
        export_family({"x": family["tiny-a"], "y": b}, family["processor"], str(family["root"] / "other"))


@pytest.mark.parametrize("reading_tokens", [0, 2])
def test_a_delta_family_rebuilds_each_member_from_its_base_and_lora(tmp_path, monkeypatch, tiny_backbones, reading_tokens):
    """A family over an installable base ships each member's adapters (its reading adapter too) and LoRA only; the
    zoo rebuilds the model."""
    monkeypatch.setenv("SPARSECUT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    model, processor = from_backbones(tiny_backbones["vision"], tiny_backbones["text"], pattern="sparse-uniform",
                                      num_shortcuts=3, reading_tokens=reading_tokens)
    randomise_gates(model)
    with_lora = add_lora(model, {"r": 2, "alpha": 4, "dropout": 0.0, "modules": "attention"})
    with torch.no_grad():  # a LoRA that changes something (peft starts B at zero)
        for name, param in with_lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    trained = tmp_path / "trained"
    with_lora.save_pretrained(trained / "lora")
    merged = with_lora.merge_and_unload().eval()
    merged.save_pretrained(trained)
    base = {"text": tiny_backbones["text"], "sha256": "not-an-installed-base"}
    family = tmp_path / "assets" / "tiny"
    export_family({"delta": merged}, processor, str(family), dtype=torch.float32, base=base,
                  loras={"delta": str(trained / "lora")}, sources={"delta": str(trained)})
    stored = load_file(family / "models" / "delta" / "model.safetensors")
    assert stored and not any(k.startswith(zoo.LLM_PREFIXES + (zoo.VISION_PREFIX,)) for k in stored)  # adapters only
    assert any(".reading_adapter." in k for k in stored) == bool(reading_tokens)
    assert (family / "models" / "delta" / "lora" / "adapter_model.safetensors").exists()
    loaded = SparseCutForConditionalGeneration.from_pretrained("delta").eval()
    shipped = SparseCutProcessor.from_pretrained("delta")
    assert shipped.tokens_per_image(True) == merged.config.image_seq_length + reading_tokens
    batch = image_batch(shipped, ["What?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-5)
    unmerged = tmp_path / "unmerged"  # the start of a continued training: base LLM as it is, the LoRA beside it
    zoo.write_member("delta", str(unmerged), merge_lora=False)
    start = SparseCutForConditionalGeneration.from_pretrained(unmerged).eval()
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(start.state_dict()[key], zoo.base_weights(tiny_backbones["text"], start.config.text_config.vocab_size)[key])
    continued = add_lora(start, {"r": 2, "alpha": 4, "dropout": 0.0, "modules": "attention", "init": str(unmerged / "lora")})
    with torch.no_grad():
        torch.testing.assert_close(continued(**batch).logits, loaded(**batch).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has r 2 \\(asked: 4\\), lora_alpha 4 \\(asked: 8\\)"):
        add_lora(SparseCutForConditionalGeneration.from_pretrained(unmerged),
                 {"r": 4, "alpha": 8, "modules": "attention", "init": str(unmerged / "lora")})
    with pytest.raises(ValueError, match="is not a saved LoRA"):
        add_lora(SparseCutForConditionalGeneration.from_pretrained(unmerged), {"r": 2, "alpha": 4, "init": str(unmerged)})
    with torch.no_grad():  # an LLM weight changed outside the LoRA cannot ship as a delta
        merged.model.language_model.norm.weight.add_(1.0)
    with pytest.raises(ValueError, match="cannot ship as a delta"):
        export_family({"delta": merged}, processor, str(tmp_path / "other"), base=base,
                      loras={"delta": str(trained / "lora")}, sources={"delta": str(trained)})


def test_a_delta_family_refuses_another_installed_base():
    with pytest.raises(ValueError, match="trained on smollm2-135m-instruct with sha256 0000"):
        zoo.check_base({"text": "smollm2-135m-instruct", "sha256": "0" * 64})
    zoo.check_base({"text": "smollm2-135m-instruct", "sha256": BASE_MODELS["smollm2-135m-instruct"].sha256})
