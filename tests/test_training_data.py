"""Training data: labels on assistant replies only, the mismatch check, sample order, recipes."""

import copy

import numpy as np
import pytest

from conftest import TOKENIZER, image_processor, make_processor, sparsecut_config
from sparsecut import SparseCutProcessor
from training.data import IGNORE_INDEX, BadSample, EpochOrder, encode
from training.recipes import load_recipe, parse_field, recipe_names

MULTI_TURN = {
    "id": "mt",
    "image": "x.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "Top left, near the edge."},
    ],
}


def _supervised_spans(encoded, tokenizer) -> list[str]:
    spans, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    if current:
        spans.append(tokenizer.decode(current, skip_special_tokens=False))
    return spans


def test_vicuna_v1_labels_are_exactly_the_replies():
    processor = make_processor(sparsecut_config())
    encoded = encode(MULTI_TURN, processor, "vicuna_v1", 4096, high_res=True)
    assert _supervised_spans(encoded, TOKENIZER) == [" A red square.</s>", " Top left, near the edge.</s>"]
    assert encoded.input_ids.count(processor.image_token_id) == 16


def test_chat_template_labels_are_exactly_the_replies():
    tokenizer = copy.deepcopy(TOKENIZER)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    processor = SparseCutProcessor(image_processor(), tokenizer, image_size=16, image_seq_length=16)
    encoded = encode(MULTI_TURN, processor, "tokenizer", 4096, high_res=True)
    assert _supervised_spans(encoded, tokenizer) == ["A red square.</s>\n", "Top left, near the edge.</s>\n"]


def test_plain_template_supervises_the_caption():
    processor = make_processor(sparsecut_config())
    record = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Two dots."}]}
    encoded = encode(record, processor, "plain", 4096, high_res=True)
    assert _supervised_spans(encoded, TOKENIZER) == ["Two dots.\n"]
    assert encoded.input_ids[:16] == [processor.image_token_id] * 16  # plain: the image, then the caption


def test_tokenization_mismatch_is_caught():
    class MergingTokenizer:
        """Decodes supervised tokens to something else: what a template/tokenizer disagreement looks like."""

        def __getattr__(self, name):
            return getattr(TOKENIZER, name)

        def __call__(self, *args, **kwargs):
            return TOKENIZER(*args, **kwargs)

        def decode(self, ids, **kwargs):
            return "something else"

    processor = make_processor(sparsecut_config())
    processor.tokenizer = MergingTokenizer()
    with pytest.raises(BadSample, match="tokenization mismatch"):
        encode(MULTI_TURN, processor, "vicuna_v1", 4096, high_res=True)


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"image": "x.png", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "a"}]}, "image_without_placeholder"),
        ({"conversations": [{"from": "human", "value": "<image> Hi"}, {"from": "gpt", "value": "a"}]}, "placeholder_count"),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "no_reply"),
        ({"conversations": [{"from": "robot", "value": "Hi"}]}, "malformed"),
        ({"conversations": []}, "malformed"),
        ({"conversations": [{"from": "human", "value": "Hi " * 50}, {"from": "gpt", "value": "a"}]}, "too_long"),
    ],
)
def test_bad_records(record, reason):
    with pytest.raises(BadSample) as info:
        encode(record, make_processor(sparsecut_config()), "vicuna_v1", 200, high_res=True, sample_id=7)
    assert info.value.reason == reason and "sample 7" in str(info.value)


def test_epoch_order_is_deterministic_resumable_and_grouped():
    lengths = list(range(100, 140))
    multimodal = [i % 3 != 0 for i in range(40)]
    order = EpochOrder(lengths, multimodal, seed=3, group=False, megabatch=10)
    full = list(order)
    assert sorted(full) == list(range(40)) and full == list(EpochOrder(lengths, multimodal, 3, False, 10))
    order.set_position(0, 12)
    assert list(order) == full[12:] and len(order) == 28
    order.set_position(1, 0)
    assert list(order) != full
    grouped = EpochOrder(lengths, multimodal, seed=3, group=True, megabatch=10).order(0)
    for chunk in np.split(grouped, 4):
        flags = [multimodal[i] for i in chunk]
        assert flags == sorted(flags, reverse=True)  # within a megabatch: multimodal first, then text-only


def test_recipes_load_and_override():
    assert {"stage1", "stage2", "stage2_unfrozen_vit", "stage2_lora"} <= set(recipe_names())
    stage1 = load_recipe("stage1")
    assert stage1.train_modules == ["adapters"] and stage1.learning_rate == 1e-3 and stage1.global_batch_size == 256
    stage2 = load_recipe("stage2", {"learning_rate": 1e-5})
    assert stage2.learning_rate == 1e-5 and stage2.train_modules == ["adapters", "language_model"]
    assert parse_field("global_batch_size", "1e2") == 100 and parse_field("lora", "none") is None
    assert parse_field("gradient_checkpointing", "false") is False
    with pytest.raises(ValueError, match="Unknown recipe"):
        load_recipe("stage3")
    with pytest.raises(ValueError, match="train_modules"):
        load_recipe("stage1", {"train_modules": ["projector"]})
    with pytest.raises(ValueError, match="expected an integer"):
        parse_field("global_batch_size", "2.5")


def test_training_benchmark_runs(tmp_path):
    from training.bench import main as bench

    out = tmp_path / "bench.json"
    assert bench(["--preset", "micro", "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    import json

    results = json.loads(out.read_text())
    assert [r["stage"] for r in results] == [1, 2] and all(r["tokens_per_s"] > 0 for r in results)
    assert results[0]["trainable_params"] < results[1]["trainable_params"]  # stage 1: adapters only
    assert results[0]["text_tokens"] == 16 and results[0]["seq_len"] == 16 + 16  # micro: 16 visual tokens
