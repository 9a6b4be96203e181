"""sparsecut.loading: one loader for a shipped name, a SparseCut folder, an HF LLaVA folder or hub id."""

import json

import pytest
import torch

from conftest import TOKENIZER, image_processor, make_model, make_processor, tiny_llava
from sparsecut.loading import checkpoint_kind, load_checkpoint


@pytest.fixture
def folders(tmp_path):
    llava = tmp_path / "llava"
    tiny_llava().save_pretrained(llava)
    TOKENIZER.save_pretrained(llava)
    image_processor().save_pretrained(llava)
    sparse = tmp_path / "sparse"
    model = make_model(seed=3)
    model.save_pretrained(sparse)
    make_processor(model.config).save_pretrained(sparse)
    return {"llava": str(llava), "sparse": str(sparse), "model": model, "root": tmp_path}


def test_each_kind_is_recognised_and_the_rest_refused_with_the_reason(folders):
    assert checkpoint_kind(folders["llava"]) == "llava" and checkpoint_kind(folders["sparse"]) == "sparsecut"
    assert checkpoint_kind("llava-hf/llava-1.5-7b-hf") == "hub"
    empty = folders["root"] / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        checkpoint_kind(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="holds a 'bert' checkpoint"):
        checkpoint_kind(str(empty))
    with pytest.raises(ValueError, match="is a file"):
        checkpoint_kind(str(empty / "config.json"))
    with pytest.raises(ValueError, match="neither a folder, a hub id"):
        checkpoint_kind("no such model")


def test_a_llava_checkpoint_loads_as_the_baseline_or_as_a_pattern_to_train(folders):
    baseline, processor = load_checkpoint(folders["llava"])
    assert baseline.config.mode == "llava" and processor.template == "vicuna_v1"
    model, processor = load_checkpoint(folders["llava"], pattern="sparse-uniform", num_shortcuts=3, high_res=False)
    assert model.config.pattern == "sparse-uniform" and len(model.config.shortcuts) == 3 and not model.config.high_res
    assert processor.template == "vicuna_v1" and not processor.high_res
    assert load_checkpoint(folders["llava"], template="plain")[1].template == "plain"


def test_a_sparsecut_folder_loads_as_saved_in_the_dtype_asked(folders):
    model, processor = load_checkpoint(folders["sparse"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.config.shortcut_pairs == folders["model"].config.shortcut_pairs
    original = folders["model"].state_dict()
    assert all(torch.equal(v, original[k].to(v.dtype)) for k, v in model.state_dict().items() if v.is_floating_point())
