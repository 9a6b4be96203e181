"""SparseCutProcessor: views and their geometry, placeholders, chat templates, save/load."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGE_TOKEN_ID, M_V, TOKENIZER, image_processor, make_processor, sparsecut_config
from sparsecut import SparseCutProcessor
from sparsecut.templates import VICUNA_V1_SYSTEM, render


def _quadrants(size=32):
    """A square image with four solid quadrants: red, green / blue, white."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    h = size // 2
    array[:h, :h] = (255, 0, 0)
    array[:h, h:] = (0, 255, 0)
    array[h:, :h] = (0, 0, 255)
    array[h:, h:] = (255, 255, 255)
    return Image.fromarray(array)


def _unnormalise(view, processor):
    mean = torch.tensor(processor.image_processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_processor.image_std)[:, None, None]
    return ((view * std + mean) * 255).round().clamp(0, 255)  # (3, S, S)


def test_crops_are_the_quadrants_of_the_upsampled_image_row_by_row():
    processor = make_processor(sparsecut_config())
    views = processor.image_views(_quadrants())
    assert views.shape == (5, 3, 16, 16)
    expected = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for crop, colour in zip(views[1:], expected):
        pixels = _unnormalise(crop, processor)
        assert torch.allclose(pixels[:, 2:-2, 2:-2].mean((1, 2)), torch.tensor(colour, dtype=torch.float32), atol=2)
    low = _unnormalise(views[0], processor)
    assert torch.allclose(low[:, 3, 3], torch.tensor([255.0, 0, 0]), atol=2)  # the low-res view has all four
    assert torch.allclose(low[:, 12, 12], torch.tensor([255.0, 255, 255]), atol=2)


def test_non_square_images_are_padded_like_llava_or_cropped():
    wide = Image.new("RGB", (32, 16), (255, 0, 0))
    padded = make_processor(sparsecut_config())
    views = padded.image_views(wide)
    mean = [round(255 * m) for m in padded.image_processor.image_mean]
    assert torch.allclose(_unnormalise(views[0], padded)[:, 0, 8], torch.tensor(mean, dtype=torch.float32), atol=1)
    assert torch.allclose(_unnormalise(views[0], padded)[:, 8, 8], torch.tensor([255.0, 0, 0]), atol=1)
    cropped = make_processor(sparsecut_config(), pad_to_square=False)
    assert torch.allclose(_unnormalise(cropped.image_views(wide)[0], cropped)[:, 0, 8], torch.tensor([255.0, 0, 0]), atol=1)


def test_batch_layout_and_placeholders():
    processor = make_processor(sparsecut_config())
    images = [_quadrants(), Image.new("RGB", (10, 30))]
    batch = processor(images=images, text=[processor.prompt("What?"), processor.prompt("A longer question?")])
    assert batch["pixel_values"].shape == (2, 5, 3, 16, 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert ((batch["input_ids"] == IMAGE_TOKEN_ID).sum(1) == M_V).all()
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1, 0] == 1  # left padding
    right = processor(images=images, text=[processor.prompt("What?"), processor.prompt("A longer question?")], padding_side="right")
    assert right["attention_mask"][0, -1] == 0
    low = processor(images=images[:1], text=processor.prompt("What?"), high_res=False)
    assert low["pixel_values"].shape == (1, 1, 3, 16, 16)


def test_placeholder_errors():
    processor = make_processor(sparsecut_config())
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder\(s\) but 2 image\(s\)"):
        processor(images=[_quadrants(), _quadrants()], text=processor.prompt("Hi"))
    with pytest.raises(ValueError, match="text is required"):
        processor(images=[_quadrants()])
    with pytest.raises(ValueError, match="truncated"):
        processor(images=[_quadrants()], text=processor.prompt("Hi"), truncation=True, max_length=20)
    tokenizer = copy.deepcopy(TOKENIZER)
    with pytest.raises(ValueError, match="has no '<img>' token"):
        SparseCutProcessor(image_processor(), tokenizer, image_token="<img>")


def test_vicuna_v1_template_matches_llava():
    conversation = [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Which colour?"},
    ]
    text = render(conversation, "vicuna_v1")
    assert text == (VICUNA_V1_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Which colour? ASSISTANT:")
    hf_style = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert render(hf_style, "vicuna_v1") == VICUNA_V1_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT:"


def test_plain_template_is_image_then_caption():
    conversation = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "Two red squares."}]
    assert render(conversation, "plain") == "<image>Two red squares.\n"
    assert render(conversation[:1], "plain") == "<image>"


def test_tokenizer_chat_template():
    tokenizer = copy.deepcopy(TOKENIZER)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    processor = SparseCutProcessor(image_processor(), tokenizer, image_size=16, image_seq_length=M_V)
    assert processor.template == "tokenizer"  # 'auto' picks the tokenizer's own template when it has one
    assert processor.prompt("Hi?") == "<|user|><image>\nHi?\n<|assistant|>"
    assert make_processor(sparsecut_config()).template == "vicuna_v1"  # and LLaVA-1.5's otherwise
    with pytest.raises(ValueError, match="needs a tokenizer with a chat_template"):
        render([{"role": "user", "content": "x"}], "tokenizer", TOKENIZER)
    with pytest.raises(ValueError, match="Unknown chat template"):
        render([{"role": "user", "content": "x"}], "chatml")
    with pytest.raises(ValueError, match="Unknown role"):
        render([{"role": "bot", "content": "x"}], "vicuna_v1")


def test_save_and_load_round_trip(tmp_path):
    processor = make_processor(sparsecut_config(), template="plain", pad_to_square=False)
    processor.save_pretrained(tmp_path)
    loaded = SparseCutProcessor.from_pretrained(tmp_path)
    for field in ("image_size", "image_seq_length", "high_res", "high_res_grid", "template", "pad_to_square", "image_token_id"):
        assert getattr(loaded, field) == getattr(processor, field), field
    text = processor.prompt("What?")
    a = processor(images=[_quadrants()], text=text)
    b = loaded(images=[_quadrants()], text=text)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.allclose(a["pixel_values"], b["pixel_values"])
