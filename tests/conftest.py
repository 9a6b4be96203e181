"""Tiny random models, a character-level tokenizer and a 16-px image processor, built from configs (no downloads)."""

from __future__ import annotations

import string
from contextlib import contextmanager

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast

from sparsecut import SparseCutConfig, SparseCutForConditionalGeneration, SparseCutProcessor

IMAGE_SIZE, PATCH = 16, 4  # 16 tokens per view
M_V = (IMAGE_SIZE // PATCH) ** 2


def vision_config(model_type: str = "clip_vision_model", layers: int = 6) -> dict:
    return dict(
        model_type=model_type,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )


def text_config(model_type: str = "llama", layers: int = 8, vocab_size: int = 128) -> dict:
    cfg = dict(
        model_type=model_type,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if model_type == "qwen2":
        cfg["tie_word_embeddings"] = True
    return cfg


def make_tokenizer(with_image_token: bool = True) -> PreTrainedTokenizerFast:
    """Character-level tokenizer: <pad>=0, <s>=1, </s>=2, <unk>=3, printable chars, then <image>."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if with_image_token:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


TOKENIZER = make_tokenizer()
IMAGE_TOKEN_ID = TOKENIZER.convert_tokens_to_ids("<image>")


def image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def sparsecut_config(text_type: str = "llama", vision_type: str = "clip_vision_model", **overrides) -> SparseCutConfig:
    fields = dict(
        vision_config=vision_config(vision_type),
        text_config=text_config(text_type),
        image_token_id=IMAGE_TOKEN_ID,
        pattern="sparse-uniform",
        num_shortcuts=3,
    )
    fields.update(overrides)
    return SparseCutConfig(**fields)


def make_model(seed: int = 0, **overrides) -> SparseCutForConditionalGeneration:
    torch.manual_seed(seed)
    return SparseCutForConditionalGeneration(sparsecut_config(**overrides)).eval()


def make_processor(config: SparseCutConfig, **kwargs) -> SparseCutProcessor:
    return SparseCutProcessor.from_model_config(config, image_processor(), TOKENIZER, **kwargs)


def randomise_gates(model, seed: int = 1) -> None:
    """Give zero-initialised gates and attention outputs random values, so every shortcut contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.model.adapters.values():
            if adapter.gate is not None:
                adapter.gate.copy_(torch.randn(adapter.gate.shape, generator=gen))
            if adapter.attention is not None:
                o = adapter.attention.o_proj
                o.weight.copy_(0.2 * torch.randn(o.weight.shape, generator=gen))


def tiny_llava(text_type: str = "llama", seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=vision_config(),
        text_config=text_config(text_type),
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=M_V,
    )
    return LlavaForConditionalGeneration(config).eval()


def image_batch(processor: SparseCutProcessor, questions: list[str], seed: int = 0, **kwargs):
    """Processed inputs for one random image per question (left padded)."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (24 + 4 * i, 20, 3), dtype=np.uint8)) for i in range(len(questions))]
    return processor(images=images, text=[processor.prompt(q) for q in questions], **kwargs)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def save_tiny_backbones(root, text_type: str = "llama", chat_template: str | None = None) -> dict:
    """Save a tiny CLIP vision tower (+ image processor) and a tiny causal LM (+ tokenizer without <image>) to disk."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.manual_seed(0)
    paths = {"vision": str(root / "vision"), "text": str(root / "text")}
    vision = AutoModel.from_config(AutoConfig.for_model(**vision_config()))
    vision.save_pretrained(paths["vision"])
    image_processor().save_pretrained(paths["vision"])
    cfg = text_config(text_type, vocab_size=len(TOKENIZER) - 1)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    lm.save_pretrained(paths["text"])
    tokenizer = make_tokenizer(with_image_token=False)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(paths["text"])
    return paths


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict:
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@contextmanager
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread (the CPU is shared); the previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
