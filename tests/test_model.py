"""SparseCutForConditionalGeneration: injection (eq. 4), modes, caching, checkpointing, save/load, threads."""

import threading

import pytest
import torch

from conftest import IMAGE_TOKEN_ID, M_V, image_batch, make_model, make_processor, randomise_gates, sparsecut_config
from sparsecut import SparseCutForConditionalGeneration
from sparsecut.cache_name import CACHE_KWARG
from sparsecut.config import pattern_config
from sparsecut.model import CheckpointMismatchError, decoder_layers_of


def _model_and_batch(questions=("What is written here?", "Colour?"), seed=0, **overrides):
    model = make_model(seed=seed, **overrides)
    randomise_gates(model)
    batch = image_batch(make_processor(model.config), list(questions), seed=seed)
    return model, batch


def _llava_mode_copy(model):
    """A llava-mode model carrying the same tower, LLM and (L_v - 1, 1) adapter MLP."""
    config = pattern_config(model.config, pattern="llava", shortcuts=None, num_shortcuts=None, high_res=False, adapter_attention=False)
    llava = SparseCutForConditionalGeneration(config).eval()
    own = llava.state_dict()
    shared = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    missing = set(own) - set(shared)
    assert not missing, missing
    llava.load_state_dict(shared)
    return llava


@pytest.mark.parametrize("high_res", [False, True])
def test_zero_initialised_sparse_uniform_equals_llava_mode(high_res):
    model = make_model(high_res=high_res)  # untrained: extra gates at 0, attention outputs at 0
    assert len(model.config.shortcuts) == 3 and model.config.primary_shortcut == (5, 1)
    llava = _llava_mode_copy(model)
    batch = image_batch(make_processor(model.config), ["Where is the cat?", "Is it red?"])
    with torch.no_grad():
        ours = model(**batch).logits
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]).logits
    assert (ours - ref).abs().max().item() <= 1e-5
    randomise_gates(model)
    with torch.no_grad():
        assert (model(**batch).logits - ref).abs().max().item() > 1e-3


def test_injection_changes_only_visual_positions_at_target_layers():
    model, batch = _model_and_batch()
    layers = decoder_layers_of(model.model.language_model)
    inputs, outputs = {}, {}
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=index: inputs.__setitem__(i, a[0].detach().clone())))
        handles.append(layer.register_forward_hook(lambda m, a, o, i=index: outputs.__setitem__(i, o.detach().clone())))
    try:
        with torch.no_grad():
            model(**batch)
            features, _ = model.model.get_shortcut_features(batch["pixel_values"])
            embeds = model.get_input_embeddings()(batch["input_ids"])
    finally:
        for handle in handles:
            handle.remove()
    visual = batch["input_ids"] == IMAGE_TOKEN_ID  # (B, T)
    targets = {}
    for (_, j), z in features.items():
        targets[j] = targets.get(j, 0) + z.reshape(-1, z.shape[-1])
    assert sorted(targets) == [1, 3, 6]
    # layer 1: text positions are the embeddings, visual positions are exactly Z of the (5, 1) shortcut
    assert torch.equal(inputs[0][~visual], embeds[~visual])
    assert torch.allclose(inputs[0][visual], targets[1], atol=1e-6)
    for j in range(2, len(layers) + 1):
        delta = inputs[j - 1] - outputs[j - 2]  # what was added before layer j
        assert torch.equal(delta[~visual], torch.zeros_like(delta[~visual])), f"text positions changed at layer {j}"
        if j in targets:
            assert torch.allclose(delta[visual], targets[j], atol=1e-5), f"layer {j}"
            assert delta[visual].abs().max() > 0
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), f"layer {j} has no shortcut but changed"


def test_kv_cache_generation_equals_no_cache_generation():
    model, batch = _model_and_batch()
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    with_cache = model.generate(**batch, use_cache=True, **kwargs)
    without = model.generate(**batch, use_cache=False, **kwargs)
    assert with_cache.shape[1] == batch["input_ids"].shape[1] + 10
    assert torch.equal(with_cache, without)


def test_cache_is_taken_under_either_name_and_returned_under_the_installed_one():
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; forward takes both, outputs use the installed name."""
    model, batch = _model_and_batch()
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        assert CACHE_KWARG in prefill and prefill[CACHE_KWARG].get_seq_length() == batch["input_ids"].shape[1]
        step = dict(input_ids=batch["input_ids"][:, -1:] * 0 + 7,
                    attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(batch["attention_mask"][:, :1])], 1))
        logits = {}
        for name in ("cache", "past_key_values"):
            cache = model(**batch, use_cache=True)[CACHE_KWARG]
            logits[name] = model(**step, **{name: cache}, use_cache=True).logits
        full = model(input_ids=torch.cat([batch["input_ids"], step["input_ids"]], 1), attention_mask=step["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits[:, -1:]
        assert torch.equal(logits["cache"], logits["past_key_values"])
        assert torch.allclose(logits["cache"], full, atol=1e-5)
        with pytest.raises(ValueError, match="not both"):
            model(**step, cache=prefill[CACHE_KWARG], past_key_values=prefill[CACHE_KWARG])


def test_generate_passes_per_call_settings_to_the_prefill():
    model, batch = _model_and_batch()
    for settings in (dict(), dict(shortcuts="5:1", high_res=False), dict(shortcuts="3:3")):
        out = model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True, **settings)
        with torch.no_grad():
            expected = model(**batch, **settings).logits[:, -1]
        assert torch.allclose(out.logits[0], expected, atol=1e-5), settings
    assert not torch.allclose(model(**batch, shortcuts="5:1").logits, model(**batch).logits)


def test_context_length_is_independent_of_high_res_and_concat_appends():
    model = make_model(high_res=True)
    processor = make_processor(model.config)
    with_high = image_batch(processor, ["Hi?"])
    without = image_batch(processor, ["Hi?"], high_res=False)
    assert with_high["pixel_values"].shape[1] == 5 and without["pixel_values"].shape[1] == 1
    assert with_high["input_ids"].shape == without["input_ids"].shape
    assert int((with_high["input_ids"] == IMAGE_TOKEN_ID).sum()) == M_V

    concat = make_model(high_res=True, high_res_fusion="concat")
    assert concat.config.mode == "concat" and concat.config.num_image_tokens == 5 * M_V
    concat_batch = image_batch(make_processor(concat.config), ["Hi?"])
    assert int((concat_batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == (1 + 2**2) * M_V
    assert concat_batch["input_ids"].shape[1] == with_high["input_ids"].shape[1] + 4 * M_V
    with torch.no_grad():
        logits = concat(**concat_batch).logits
    assert logits.shape[1] == concat_batch["input_ids"].shape[1]


def test_high_res_changes_the_answer_and_can_be_switched_off_per_call():
    model, batch = _model_and_batch()
    with torch.no_grad():
        fused = model(**batch).logits
        low_only = model(**batch, high_res=False).logits
        four_d = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:, 0]).logits
    assert (fused - low_only).abs().max() > 1e-4
    assert torch.equal(low_only, four_d)  # (B, 3, H, W) is the low-res view alone, as HF LLaVA takes it


def test_shortcut_subset_is_an_inference_time_ablation():
    model, batch = _model_and_batch()
    with torch.no_grad():
        subset = model(**batch, shortcuts="5:1,3:3").logits
        model.model.adapters["vit1_llm6"].gate.zero_()
        zeroed = model(**batch).logits
    assert torch.allclose(subset, zeroed, atol=1e-6)
    with pytest.raises(ValueError, match=r"not in this model"):
        model(**batch, shortcuts=[(4, 2)])


def test_vision_tower_stops_after_the_deepest_needed_layer():
    model, batch = _model_and_batch()
    calls = []
    layers = model.model.vision_tower.encoder.layers
    handles = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(layers, start=1)]
    try:
        with torch.no_grad():
            model(**batch)
            assert max(calls) == 5 and len(calls) == 5  # one pass over all views, layer 6 never runs
            calls.clear()
            model(**batch, shortcuts="3:3")
            assert calls == [1, 2, 3]
    finally:
        for handle in handles:
            handle.remove()


def test_loss_is_the_shifted_cross_entropy_on_labelled_tokens():
    model, batch = _model_and_batch()
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[labels == IMAGE_TOKEN_ID] = -100
    out = model(**batch, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, batch = _model_and_batch()
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert decoder_layers_of(model.model.language_model)[0].gradient_checkpointing
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("adapters.vit1_llm6" in n for n in grads[0])  # the deepest injection gets gradients
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_text_only_and_image_samples_in_one_batch():
    model = make_model()
    randomise_gates(model)
    processor = make_processor(model.config)
    from PIL import Image

    image = Image.new("RGB", (20, 20), (200, 10, 10))
    batch = processor(images=[image], text=[processor.prompt("Colour?"), processor.prompt("Say hi.", with_image=False)])
    assert batch["pixel_values"].shape[0] == 1
    with torch.no_grad():
        both = model(**batch).logits
        alone = model(**processor(text=[processor.prompt("Say hi.", with_image=False)])).logits
    length = alone.shape[1]
    assert torch.allclose(both[1, -length:], alone[0], atol=1e-5)


def test_mismatched_inputs_raise_specific_errors():
    model, batch = _model_and_batch()
    fewer = batch["input_ids"].clone()
    fewer[0, (fewer[0] == IMAGE_TOKEN_ID).nonzero()[0]] = 5  # one placeholder short
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=fewer, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="needs 5 views"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:, :3]})
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    low_model = make_model(high_res=False)
    with pytest.raises(ValueError, match="built without high-res"):
        low_model(**batch, high_res=True)


@pytest.mark.parametrize("text_type, vision_type", [("llama", "clip_vision_model"), ("qwen2", "clip_vision_model"), ("mistral", "siglip_vision_model")])
def test_save_and_load_round_trip(tmp_path, text_type, vision_type):
    model, batch = _model_and_batch(text_type=text_type, vision_type=vision_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    from transformers import AutoModelForImageTextToText

    auto = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(auto, SparseCutForConditionalGeneration)


def test_loading_into_a_mismatched_config_says_what_differs(tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"config.shortcuts: checkpoint has \[\[1, 6\], \[3, 3\], \[5, 1\]\]"):
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config(num_shortcuts=2))
    with pytest.raises(CheckpointMismatchError, match="config.adapter_attention"):
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=sparsecut_config(adapter_attention=False))
    with pytest.raises(CheckpointMismatchError, match=r"text_config.hidden_size: checkpoint has 32, requested 64"):
        wide = sparsecut_config()
        wide.text_config.hidden_size = 64
        wide.text_config.head_dim = 16
        SparseCutForConditionalGeneration.from_pretrained(tmp_path, config=wide)


def test_two_threads_with_different_settings_get_what_each_gets_alone():
    model, batch = _model_and_batch()
    settings = [dict(shortcuts=None, high_res=True), dict(shortcuts="5:1", high_res=False), dict(shortcuts="3:3,1:6", high_res=True)]
    with torch.no_grad():
        alone = [model(**batch, **s).logits for s in settings]
    results, errors = {}, []

    def work(index):
        try:
            with torch.no_grad():
                for _ in range(6):
                    out = model(**batch, **settings[index]).logits
                    if not torch.equal(out, alone[index]):
                        results[index] = False
                        return
            results[index] = True
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(settings)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == {0: True, 1: True, 2: True}
    assert not torch.equal(alone[0], alone[1])


def test_models_sharing_one_llm_register_its_injection_hook_once():
    first = make_model(pattern="sparse-uniform")
    second = SparseCutForConditionalGeneration(first.config, language_model=first.model.language_model)
    for layer in decoder_layers_of(second.model.language_model):
        assert len(layer._forward_pre_hooks) == 1
    batch = image_batch(make_processor(first.config), ["What colour is the square?"])
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        assert torch.equal(first(**batch).logits, second(**batch).logits)


def test_a_decoder_that_drops_its_kwargs_is_refused_by_name():
    from sparsecut.injection import INJECTION_KWARG

    model = make_model(pattern="sparse-uniform")
    assert any(layer > 1 for _, layer in model.config.shortcut_pairs)  # shortcuts beyond layer 1 need the hooks
    batch = image_batch(make_processor(model.config), ["What colour is the square?"])
    decoder = model.model.language_model
    original = decoder.forward

    def dropping(*args, **kwargs):  # a decoder that does not hand **kwargs on to its layers
        kwargs.pop(INJECTION_KWARG, None)
        return original(*args, **kwargs)

    decoder.forward = dropping
    with pytest.raises(RuntimeError, match=rf"{type(decoder).__name__} did not pass the keyword argument "
                                           rf"'{INJECTION_KWARG}' on to its decoder layers \[\d"):
        model(**batch)
    del decoder.forward  # the real decoder again: the same call runs
    with torch.no_grad():
        assert model(**batch).logits.isfinite().all()


def test_the_injection_plan_sums_the_shortcuts_into_each_layer():
    from sparsecut.injection import add_at, inject, plan

    z = {(3, 1): torch.ones(1, 2, 4), (5, 2): torch.full((1, 2, 4), 2.0), (4, 2): torch.full((1, 2, 4), 3.0)}
    per_layer = plan(z)
    assert sorted(per_layer) == [0, 1] and torch.equal(per_layer[1], torch.full((2, 4), 5.0))
    positions = (torch.tensor([0, 0]), torch.tensor([1, 3]))
    hidden = torch.zeros(1, 5, 4)
    embeds, deeper = inject(hidden, positions, per_layer)
    assert torch.equal(embeds[0, [1, 3]], torch.ones(2, 4)) and not embeds[0, [0, 2, 4]].any()
    assert sorted(deeper.per_layer) == [1] and 0 in per_layer  # the plan itself is left as it was
    assert torch.equal(add_at(hidden, positions, torch.ones(2, 4)), embeds) and not hidden.any()
