"""Reading tokens (config ``reading_tokens``): K learned queries read the crops into K more visual tokens per image."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_batch, make_model, make_processor, one_torch_thread, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.config import pattern_config
from sparsecut.model import CheckpointMismatchError
from sparsecut.vision import vision_hidden_states
from training.recipes import Recipe
from training.trainer import apply_freezing, module_of

K = 3


def _reading_model(seed: int = 0, **overrides):
    model = make_model(seed, reading_tokens=K, **overrides)
    randomise_gates(model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # open the reading queries' attention (their output projections start at zero)
        for attention in model.model.reading_adapter.attentions:
            attention.o_proj.weight.copy_(0.2 * torch.randn(attention.o_proj.weight.shape, generator=gen))
    return model


def _inputs_embeds(model, batch, **kwargs) -> torch.Tensor:
    seen = {}
    handle = model.model.language_model.register_forward_pre_hook(lambda _, a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch, **kwargs)
    finally:
        handle.remove()
    return seen["inputs_embeds"]


def test_the_config_counts_the_reading_tokens_with_high_res_only_and_checks_them():
    config = sparsecut_config(reading_tokens=K)
    assert config.tokens_per_image(True) == config.image_seq_length + K
    assert config.tokens_per_image(False) == config.image_seq_length
    assert config.reading_layer == config.primary_shortcut[0]  # the input shortcut's ViT layer by default
    assert sparsecut_config(reading_tokens=K, reading_layer=2).reading_layer == 2
    assert make_processor(config).tokens_per_image(True) == config.image_seq_length + K
    for bad, message in [(dict(reading_tokens=-1), "reading_tokens must be an integer >= 0"),
                         (dict(reading_tokens=K, high_res=False, high_res_grid=1), "need high_res=True"),
                         (dict(reading_tokens=K, high_res_fusion="concat"), "concat already puts"),
                         (dict(reading_layer=2), "need reading_tokens > 0"),
                         (dict(reading_tokens=K, reading_layer=99), "reading_layer must be a ViT layer in 1..6")]:
        with pytest.raises(ValueError, match=message):
            sparsecut_config(**bad)


def test_each_images_last_placeholders_take_its_reading_tokens_and_the_rest_is_unchanged():
    model = _reading_model()
    config, processor = model.config, make_processor(model.config)
    batch = image_batch(processor, ["what is written?", "and here?"])
    embeds = _inputs_embeds(model, batch)
    mask = batch["input_ids"] == config.image_token_id
    placed = embeds[mask].view(2, config.image_seq_length + K, -1)  # (images, M_v + K, Dt)
    inner = model.model
    with torch.no_grad():
        hidden = vision_hidden_states(inner.vision_tower, batch["pixel_values"].flatten(0, 1), {config.reading_layer},
                                      drop_cls=True)[config.reading_layer]
        crops = hidden.unflatten(0, (2, config.num_views))[:, 1:].flatten(1, 2)  # (images, g*g*M_v, Dv)
        expected = inner.reading_adapter(crops)
        features, _ = inner.get_shortcut_features(batch["pixel_values"])
    assert torch.allclose(placed[:, config.image_seq_length:], expected, atol=1e-6)
    into_input = sum(z for (_, j), z in features.items() if j == 1)  # the shortcuts into layer 1, as before
    assert torch.allclose(placed[:, : config.image_seq_length], into_input, atol=1e-6)
    assert torch.equal(embeds[~mask], inner.get_input_embeddings()(batch["input_ids"])[~mask])
    assert not torch.allclose(expected[0], expected[1])  # read from each image's own crops


def test_without_high_res_a_call_has_no_reading_tokens():
    model = _reading_model()
    processor = make_processor(model.config)
    batch = image_batch(processor, ["what colour?"], high_res=False)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    with torch.no_grad():
        assert torch.isfinite(model(**batch, high_res=False).logits).all()
    wrong = image_batch(processor, ["what colour?"])  # K more placeholders than a low-res call fills
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**wrong, high_res=False)


def test_an_untrained_reading_token_is_the_same_for_every_image():
    model = make_model(reading_tokens=K)
    batch = image_batch(make_processor(model.config), ["a?", "b?"])
    embeds = _inputs_embeds(model, batch)
    placed = embeds[batch["input_ids"] == model.config.image_token_id].view(2, -1, embeds.shape[-1])[:, -K:]
    reading = model.model.reading_adapter
    assert torch.allclose(placed[0], placed[1]) and torch.allclose(placed[0], reading.mlp(reading.queries), atol=1e-6)
    assert not torch.allclose(placed[0, 0], placed[0, 1])  # each token its own query


def test_a_reading_checkpoint_round_trips_trains_as_an_adapter_and_refuses_a_plain_config(tmp_path):
    model = _reading_model()
    batch = image_batch(make_processor(model.config), ["what is written?"])
    model.save_pretrained(tmp_path)
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.reading_tokens == K and loaded.config.reading_layer == model.config.reading_layer
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    names = [n for n, _ in model.named_parameters() if ".reading_adapter." in n]
    assert names and {module_of(n) for n in names} == {"reading_adapter"}
    for recipe, trained in ((Recipe(train_modules=["adapters"]), True), (Recipe(train_modules=["reading_adapter"]), True),
                            (Recipe(train_modules=["language_model"]), False)):
        apply_freezing(model, recipe)  # stages 1 and 2 train them with the adapters; a reading stage alone
        assert {p.requires_grad for n, p in model.named_parameters() if n in names} == {trained}
        assert any(p.requires_grad for n, p in model.named_parameters() if ".adapters." in n) == ("adapters" in recipe.train_modules)
    with pytest.raises(CheckpointMismatchError, match="reading_adapter"):
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config())


def test_a_low_res_copy_of_the_config_has_no_reading_tokens_unless_asked():
    config = sparsecut_config(reading_tokens=K)
    low = pattern_config(config, high_res=False, high_res_grid=1)
    assert (low.reading_tokens, low.reading_layer, low.tokens_per_image(False)) == (0, None, config.image_seq_length)
    assert pattern_config(config, pattern="sparse-bottom").reading_tokens == K  # other changes keep them
    with pytest.raises(ValueError, match="need high_res=True"):
        pattern_config(config, high_res=False, high_res_grid=1, reading_tokens=K)


@pytest.mark.parametrize("high_res", [None, False])
def test_the_app_serves_a_reading_model_with_and_without_high_res_as_its_own_generate(tmp_path, high_res):
    from app.engine import Engine
    from app.request_checks import Decoding
    from test_app_engine import reference

    model = _reading_model()
    model.save_pretrained(tmp_path / "model")
    make_processor(model.config).save_pretrained(tmp_path / "model")
    image = str(tmp_path / "scene.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    with one_torch_thread():
        engine = Engine([str(tmp_path / "model")])
        name = engine.models[0]  # a folder is served under its own name
        final = list(engine.answer(image, "What is written?", name, None, high_res, Decoding(max_new_tokens=4)))[-1]
        text, new_tokens, input_ids = reference(engine, name, image, "What is written?", high_res=high_res, max_new_tokens=4)
        contributions = engine.analyse("contributions", image, "What is written?", name, None, high_res,
                                       max_new_tokens=2)
    assert final.done and (final.text, final.new_tokens) == (text, new_tokens)
    assert final.visual_tokens == int((input_ids == model.config.image_token_id).sum())
    assert final.visual_tokens == model.config.image_seq_length + (K if high_res is None else 0)
    assert len(contributions.table) == len(model.config.shortcut_pairs)
    assert engine.info(name)["reading_tokens"] == K


def _own_tower_model(seed: int = 0):
    """A reading model whose reading queries look through a tower of their own (other weights than the shortcuts')."""
    from sparsecut.convert import with_reading_tower

    model = _reading_model(seed)
    tower = copy.deepcopy(model.model.vision_tower)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in tower.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    with_reading_tower(model, tower)
    with torch.no_grad():  # open the fresh queries' attention, as _reading_model does
        for attention in model.model.reading_adapter.attentions:
            attention.o_proj.weight.copy_(0.2 * torch.randn(attention.o_proj.weight.shape, generator=gen))
    return model


def test_a_reading_tower_feeds_the_reading_tokens_and_the_shortcuts_keep_theirs():
    plain = _reading_model()
    model = _own_tower_model()
    config, processor = model.config, make_processor(model.config)
    assert config.reading_tower and model.model.reading_adapter.vision_tower is not None
    batch = image_batch(processor, ["what is written?", "and here?"])
    embeds = _inputs_embeds(model, batch)
    placed = embeds[batch["input_ids"] == config.image_token_id].view(2, config.image_seq_length + K, -1)
    inner = model.model
    with torch.no_grad():
        crops = batch["pixel_values"][:, 1:].flatten(0, 1)  # the crops alone go through the reading tower
        hidden = vision_hidden_states(inner.reading_adapter.vision_tower, crops, {config.reading_layer},
                                      drop_cls=True)[config.reading_layer]
        expected = inner.reading_adapter(hidden.unflatten(0, (2, config.num_views - 1)).flatten(1, 2))
        shared = vision_hidden_states(inner.vision_tower, batch["pixel_values"].flatten(0, 1), {config.reading_layer},
                                      drop_cls=True)[config.reading_layer]
        through_shared = inner.reading_adapter(shared.unflatten(0, (2, config.num_views))[:, 1:].flatten(1, 2))
    assert torch.allclose(placed[:, config.image_seq_length:], expected, atol=1e-6)
    assert not torch.allclose(expected, through_shared, atol=1e-3)  # not the shortcuts' tower
    plain_embeds = _inputs_embeds(plain, batch)  # the fused tokens: the same model before the reading tower came
    plain_placed = plain_embeds[batch["input_ids"] == config.image_token_id].view(2, config.image_seq_length + K, -1)
    assert torch.equal(placed[:, : config.image_seq_length], plain_placed[:, : config.image_seq_length])


def test_a_reading_tower_is_frozen_as_a_tower_round_trips_and_a_config_without_it_refuses_its_checkpoint(tmp_path):
    model = _own_tower_model()
    batch = image_batch(make_processor(model.config), ["what is written?"])
    tower_names = [n for n, _ in model.named_parameters() if ".reading_adapter.vision_tower." in n]
    assert tower_names and {module_of(n) for n in tower_names} == {"vision_tower"}  # frozen with the tower
    assert {module_of(n) for n, _ in model.named_parameters()
            if ".reading_adapter." in n and n not in tower_names} == {"reading_adapter"}
    model.save_pretrained(tmp_path)
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.reading_tower
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in loaded.state_dict().items())
    with torch.no_grad():  # the same weights; the copied tower's memory layout may change the last bit
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)
    with pytest.raises(CheckpointMismatchError, match="reading_adapter.vision_tower"):
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config(reading_tokens=K))


def test_a_reading_tower_needs_reading_tokens_and_the_models_tower_shape():
    from sparsecut.convert import with_reading_tower

    with pytest.raises(ValueError, match="need reading_tokens > 0"):
        sparsecut_config(reading_tower=True)
    with pytest.raises(ValueError, match="reading_tower is True or False"):
        sparsecut_config(reading_tokens=K, reading_tower="yes")
    plain = make_model()
    with pytest.raises(ValueError, match="has no reading tokens"):
        with_reading_tower(plain, plain.model.vision_tower)
    model = _reading_model()
    wider = copy.deepcopy(model.model.vision_tower)
    wider.config = copy.deepcopy(wider.config)
    wider.config.num_hidden_layers += 1
    with pytest.raises(ValueError, match="num_hidden_layers"):
        with_reading_tower(model, wider)
    low = pattern_config(_own_tower_model().config, high_res=False, high_res_grid=1)
    assert (low.reading_tokens, low.reading_tower) == (0, False)
