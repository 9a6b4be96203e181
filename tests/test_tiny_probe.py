"""python -m training.tiny.probe: a member's recipe trained briefly on single-turn questions, scored by teacher-forced
exact match."""

from types import SimpleNamespace

import pytest
import torch

from training.data import Collator
from training.tiny.__main__ import QUICK
from sparsecut.evaluation.synthetic.dataset import scene_for
from sparsecut.convert import with_reading_tower
from training.tiny.family import LAYOUT, backbone_dirs, build_backbones, split_seed
from training.tiny.oracle import CELLS, FEATURES, OracleVLM, oracle_features
from sparsecut.evaluation.synthetic.scenes import COLOURS, GRID, SHAPES, SIZES
from training.tiny.probe import build_model, exact_match, main, probe, questions

SMALL = dict(steps=2, batch=4, scenes=8, test_scenes=4, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("probe-run")
    build_backbones(str(root), QUICK, seed=0, text=tiny_backbones["text"])  # the probe then finds them and builds nothing
    return str(root)


def test_probe_is_deterministic_and_reports_every_family(run):
    first = probe(run, "llava-tiny", ["existence", "count"], **SMALL)
    again = probe(run, "llava-tiny", ["existence", "count"], **SMALL)
    assert first["scores"] == again["scores"] and first["final_loss"] == again["final_loss"]
    assert set(first["scores"]) == {"existence", "count", "overall"}
    assert all(0.0 <= v <= 1.0 for v in first["scores"].values())
    assert first["questions"] == 8 and first["settings"]["member"] == "llava-tiny"  # 4 scenes x 2 families, always askable


def test_fresh_lm_replaces_only_the_llm_and_freezing_is_stage_2s(run):
    pretrained, _ = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0)
    fresh, _ = build_model(run, "sparsecut-tiny", fresh_lm=True, seed=0)
    weights = lambda m, part: {k: v for k, v in m.state_dict().items() if part in k}  # noqa: E731
    assert all(torch.equal(v, weights(fresh, "vision_tower")[k]) for k, v in weights(pretrained, "vision_tower").items())
    llm = weights(pretrained, "language_model.layers.0.self_attn.q_proj")
    assert all(not torch.equal(v, weights(fresh, "language_model.layers.0.self_attn.q_proj")[k]) for k, v in llm.items())
    trainable = {name.split(".")[1] for name, p in fresh.named_parameters() if p.requires_grad}
    assert "vision_tower" not in trainable and {"language_model", "adapters"} <= trainable
    assert fresh.config.high_res and fresh.config.pattern == "sparse-uniform"


class TokenOracle(torch.nn.Module):
    """Logits at position t predict token t + 1 (right-padded batches), except at the given (item, position) misses."""

    def __init__(self, vocab: int, misses: list[tuple[dict, int]]):
        super().__init__()
        self.vocab, self.misses = vocab, misses

    def forward(self, input_ids, attention_mask, pixel_values):
        logits = torch.nn.functional.one_hot(torch.roll(input_ids, -1, dims=1), self.vocab).float()
        for row in range(len(input_ids)):
            n = int(attention_mask[row].sum())
            for item, position in self.misses:
                if torch.equal(input_ids[row, :n], item["input_ids"]):
                    logits[row, position] = torch.nn.functional.one_hot(torch.tensor(0), self.vocab).float()
        return SimpleNamespace(logits=logits)


def test_exact_match_needs_every_answer_token(run):
    _, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    items, views = questions(processor, seed=5, scenes=3, families=["existence", "attribute"], high_res=False, max_shapes=2,
                             max_length=2048)
    collate = Collator(processor.tokenizer.pad_token_id)
    vocab = len(processor.tokenizer)
    unique = [i for i in items if sum(torch.equal(i["input_ids"], j["input_ids"]) for j in items) == 1]
    wrong_item = unique[0]  # the oracle recognises it by its tokens alone

    n = len(wrong_item["input_ids"])
    scores = exact_match(TokenOracle(vocab, [(wrong_item, n - 2)]), items, views, collate, batch_size=2)  # wrong </s>
    per_family = {f: sum(i["family"] == f for i in items) for f in ("existence", "attribute")}
    other = "attribute" if wrong_item["family"] == "existence" else "existence"
    assert scores[other] == 1.0
    assert scores[wrong_item["family"]] == pytest.approx(1 - 1 / per_family[wrong_item["family"]])
    assert scores["overall"] == pytest.approx(1 - 1 / len(items))


def test_numbers_and_their_first_and_later_digits_are_scored_on_their_own(run):
    _, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    items, views = questions(processor, seed=5, scenes=12, families=["reading"], high_res=False, max_shapes=2,
                             max_length=2048)
    assert {i["family"] for i in items} == {"reading"}
    numbers = [item for item in items if item["answer"].isdigit()]
    assert len(numbers) >= 2 and len(numbers) < len(items)  # words too, whose later tokens are not counted
    assert all(int((item["labels"] != -100).sum()) > item["answer_tokens"] == 2 for item in numbers)  # then the turn's end
    assert all(sum(torch.equal(n["input_ids"], j["input_ids"]) for j in items) == 1 for n in numbers[:2])  # told apart
    first = [int((n["labels"][1:] != -100).nonzero()[0]) for n in numbers[:2]]  # each one's first-digit logit
    misses = [(numbers[0], first[0]), (numbers[1], first[1] + 1)]  # a first digit wrong, and a second digit
    collate = Collator(processor.tokenizer.pad_token_id)
    scores = exact_match(TokenOracle(len(processor.tokenizer), misses), items, views, collate, batch_size=5)
    assert scores["reading"] == pytest.approx(1 - 2 / len(items))  # both wrong answers count against exact match
    assert scores["reading, later digits"] == pytest.approx(1 - 1 / len(numbers))  # only the second-digit miss here
    assert scores["reading, first digits"] == pytest.approx(1 - 1 / len(numbers))  # only the first-digit miss here
    assert scores["reading, numbers"] == pytest.approx(1 - 2 / len(numbers)) and scores["reading, words"] == 1.0


def test_max_shapes_bounds_the_scenes():
    assert all(len(scene_for(11, i, max_shapes=1)[0].shapes) == 1 for i in range(20))
    assert max(len(scene_for(11, i)[0].shapes) for i in range(40)) > 1


def test_text_probability_puts_a_text_in_every_scene_or_none_and_leaves_the_rest_of_the_scene():
    for index in range(40):
        usual, always, never = (scene_for(11, index, text_probability=p)[0] for p in (0.5, 1.0, 0.0))
        assert usual == scene_for(11, index)[0]  # 0.5 is the benchmark's scenes, unchanged
        assert always.text is not None and never.text is None
        assert always.shapes == never.shapes == usual.shapes  # only whether a text is drawn changes
    assert 10 < sum(scene_for(11, i)[0].text is not None for i in range(40)) < 30


def test_a_scene_that_poses_no_question_gives_no_multi_question_item(run):
    _, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    scenes = [scene_for(5, i, text_probability=1.0)[0] for i in range(12)]
    legible = [i for i, scene in enumerate(scenes) if scene.text.legible]
    assert 0 < len(legible) < len(scenes)  # some scribbles: neither reading nor spelling asks about them
    items, _ = questions(processor, seed=5, scenes=12, families=["reading", "spelling"], high_res=False, max_shapes=5,
                         max_length=2048, per_sample=2, text_probability=1.0)
    assert [item["scene"] for item in items] == legible


def test_bad_arguments_say_what_is_wrong(run, capsys):
    with pytest.raises(ValueError, match="unknown question families \\['colour'\\]"):
        probe(run, "llava-tiny", ["colour"], **SMALL)
    with pytest.raises(ValueError, match="unknown question families \\['where'\\]"):
        probe(run, "llava-tiny", ["count"], score_families=["count", "where"], **SMALL)
    with pytest.raises(ValueError, match="max_shapes must be 1..5"):
        probe(run, "llava-tiny", ["count"], max_shapes=9, **SMALL)
    with pytest.raises(ValueError, match="text_probability is a probability"):
        probe(run, "llava-tiny", ["reading"], text_probability=1.5, **SMALL)
    with pytest.raises(SystemExit):
        main(["--run", run, "--families", "existence,nonsense", "--steps", "1"])
    assert "unknown question families ['nonsense']" in capsys.readouterr().err


def test_oracle_features_encode_every_object_and_the_text_of_the_scene():
    for index in range(40):
        scene, _ = scene_for(3, index)
        features = oracle_features(scene)
        assert features.shape == (CELLS, FEATURES) and set(features.unique().tolist()) <= {0.0, 1.0}
        decoded = set()
        for row in range(CELLS):
            cell = features[row]
            if cell[: len(COLOURS) + len(SHAPES) + len(SIZES)].any():
                colour, shape, size = (int(cell[: len(COLOURS)].argmax()), int(cell[len(COLOURS) : -4].argmax()),
                                       int(cell[-4:-2].argmax()))
                decoded.add(((row // GRID, row % GRID), list(COLOURS)[colour], SHAPES[shape], list(SIZES)[size]))
        assert decoded == {(s.cell, s.colour, s.shape, s.size) for s in scene.shapes}
        text_rows = features[:, -2:].nonzero().tolist()
        if scene.text is None:
            assert text_rows == []
        else:
            assert text_rows == [[scene.text.cell[0] * GRID + scene.text.cell[1], 0 if scene.text.legible else 1]]


def test_oracle_vision_feeds_the_members_llm_projected_cells_at_the_placeholders(run):
    model, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0, oracle_vision=True)
    member, _ = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    assert isinstance(model, OracleVLM)
    llm = member.model.language_model.state_dict()
    assert all(torch.equal(v, llm[k]) for k, v in model.language_model.model.state_dict().items())
    items, views = questions(processor, seed=5, scenes=2, families=["count"], high_res=False, max_shapes=5,
                             max_length=2048, oracle_vision=True)
    batch = Collator(processor.tokenizer.pad_token_id)([{**item, "pixel_values": views[item["scene"]][None]} for item in items])
    seen = {}
    model.language_model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
        mask = batch["input_ids"] == model.image_token_id
        placed = seen["inputs_embeds"][mask].view(len(items), model.tokens_per_image, -1)
        assert torch.allclose(placed[:, :CELLS], model.projector(batch["pixel_values"]))
        assert not placed[:, CELLS:].any()
        text = model.language_model.get_input_embeddings()(batch["input_ids"])
        assert torch.equal(seen["inputs_embeds"][~mask], text[~mask])


def test_probe_with_oracle_vision_is_deterministic(run):
    first = probe(run, "llava-tiny", ["existence"], oracle_vision=True, **SMALL)
    again = probe(run, "llava-tiny", ["existence"], oracle_vision=True, **SMALL)
    assert first["final_loss"] == again["final_loss"] and first["scores"] == again["scores"]
    assert first["settings"]["oracle_vision"] is True and first["questions"] == 4


def test_a_family_named_twice_is_drawn_twice_as_often(run):
    _, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    setting = dict(seed=5, scenes=6, high_res=False, max_shapes=5, max_length=2048, text_probability=1.0)
    once, _ = questions(processor, families=["count", "attribute"], **setting)
    twice, _ = questions(processor, families=["count", "attribute", "count"], **setting)
    assert [i["family"] for i in once].count("count") == 6 and [i["family"] for i in twice].count("count") == 12
    assert [i["family"] for i in twice].count("attribute") == 6


def test_several_questions_per_sample_and_captions(run):
    from training.data import IGNORE_INDEX
    from sparsecut.evaluation.synthetic.questions import caption

    _, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0)
    # seed 6: scenes whose captions the quick budget's small tokenizer spells without <unk>
    setting = dict(seed=6, scenes=4, families=["existence", "count", "position"], high_res=False, max_shapes=5, max_length=2048)
    items, _ = questions(processor, **setting, per_sample=5)
    assert len(items) == 4 and {i["family"] for i in items} == {"mixed"}  # one sequence per scene
    for item in items:
        answers = (item["labels"] != IGNORE_INDEX).int().diff().eq(1).sum()  # supervised spans start
        prompt = processor.tokenizer.decode(item["input_ids"])
        assert int(answers) == 5 and prompt.count("<image>") == processor.tokens_per_image(False)
    described, _ = questions(processor, **setting, captions=True)
    for index, item in enumerate(described):
        supervised = processor.tokenizer.decode(item["input_ids"][item["labels"] != IGNORE_INDEX])
        assert caption(scene_for(6, index)[0]) in supervised


def test_probe_levers_are_deterministic_and_recorded(run):
    levers = dict(per_sample=3, caption_steps=1, llm_lr=1e-4, bf16=True)
    first = probe(run, "llava-tiny", ["existence", "count"], oracle_vision=True, **levers, **SMALL)
    again = probe(run, "llava-tiny", ["existence", "count"], oracle_vision=True, **levers, **SMALL)
    assert first["final_loss"] == again["final_loss"] and first["scores"] == again["scores"]
    assert {k: first["settings"][k] for k in levers} == levers
    assert first["questions"] == 8  # scored on single questions, whatever the training sequences hold
    with pytest.raises(ValueError, match="caption_steps in 0..steps"):
        probe(run, "llava-tiny", ["count"], caption_steps=5, **SMALL)


def test_the_learning_curve_does_not_change_the_training(run):
    plain = probe(run, "llava-tiny", ["existence"], **{**SMALL, "steps": 3})
    traced = probe(run, "llava-tiny", ["existence"], eval_every=1, **{**SMALL, "steps": 3})
    assert [point["step"] for point in traced["curve"]] == [1, 2, 3]
    assert traced["curve"][-1]["scores"] == traced["scores"] == plain["scores"]
    assert traced["final_loss"] == plain["final_loss"] and plain["curve"] == []


def test_oracle_positions_add_each_cells_row_and_column():
    from training.tiny.oracle import POSITION_FEATURES

    scene, _ = scene_for(3, 0)
    plain, placed = oracle_features(scene), oracle_features(scene, positions=True)
    assert placed.shape == (CELLS, FEATURES + POSITION_FEATURES) and torch.equal(placed[:, :FEATURES], plain)
    rows, columns = placed[:, FEATURES : FEATURES + GRID], placed[:, FEATURES + GRID :]
    assert rows.argmax(1).tolist() == [c // GRID for c in range(CELLS)] and (rows.sum(1) == 1).all()
    assert columns.argmax(1).tolist() == [c % GRID for c in range(CELLS)] and (columns.sum(1) == 1).all()


def test_oracle_text_spells_the_legible_text_at_its_cell_only():
    from training.tiny.dense import CHARS
    from training.tiny.oracle import POSITION_FEATURES, TEXT_FEATURES

    scenes = [scene_for(3, i)[0] for i in range(40)]
    texts = [s for s in scenes if s.text is not None]
    assert any(s.text.legible for s in texts) and any(not s.text.legible for s in texts)
    for scene in texts:
        full = oracle_features(scene, positions=True, text="cell")
        assert full.shape == (CELLS, FEATURES + POSITION_FEATURES + TEXT_FEATURES)
        assert torch.equal(full[:, : FEATURES + POSITION_FEATURES], oracle_features(scene, positions=True))
        spelled = full[:, FEATURES + POSITION_FEATURES :].reshape(CELLS, -1, len(CHARS))  # (cells, position, char)
        cell = scene.text.cell[0] * GRID + scene.text.cell[1]
        if not scene.text.legible:  # a scribble has no characters to give
            assert spelled.sum() == 0
            continue
        assert spelled.sum() == len(scene.text.text) and spelled[cell].sum() == len(scene.text.text)
        assert "".join(CHARS[i] for i in spelled[cell, : len(scene.text.text)].argmax(1).tolist()) == scene.text.text


def test_oracle_text_as_tokens_gives_each_character_a_row_of_its_own_after_the_cells():
    from training.tiny.dense import CHARS
    from training.tiny.oracle import POSITION_FEATURES, TEXT_POSITIONS

    scenes = [scene_for(3, i)[0] for i in range(40)]
    legible = [s for s in scenes if s.text is not None and s.text.legible]
    assert {len(s.text.text) for s in legible} == {2, 3}  # numbers and words
    for scene in scenes:
        tokens, in_cell = oracle_features(scene, True, "tokens"), oracle_features(scene, True, "cell")
        assert tokens.shape == (CELLS + TEXT_POSITIONS, in_cell.shape[1])
        assert torch.equal(tokens[:CELLS, : FEATURES + POSITION_FEATURES], in_cell[:, : FEATURES + POSITION_FEATURES])
        assert not tokens[:CELLS, FEATURES + POSITION_FEATURES :].any()  # the cells hold no characters
        assert not tokens[CELLS:, : FEATURES + POSITION_FEATURES].any()  # the character rows nothing else
        spelled = tokens[CELLS:, FEATURES + POSITION_FEATURES :].reshape(TEXT_POSITIONS, TEXT_POSITIONS, len(CHARS))
        text = scene.text.text if scene.text is not None else ""
        assert spelled.sum() == len(text)
        for k, char in enumerate(text):  # character k alone, in block k of row CELLS + k
            assert spelled[k, k, CHARS.index(char)] == 1 and spelled[k].sum() == 1
    with pytest.raises(ValueError, match="text must be one of cell, tokens"):
        oracle_features(scenes[0], text="everywhere")


def test_oracle_character_tokens_fill_placeholders_of_their_own(run):
    from training.tiny.oracle import TEXT_POSITIONS

    model, processor = build_model(run, "llava-tiny", fresh_lm=False, seed=0, oracle_vision=True, oracle_text="tokens")
    _, plain = build_model(run, "llava-tiny", fresh_lm=False, seed=0, oracle_vision=True)
    assert processor.tokens_per_image(False) == model.tokens_per_image == max(CELLS + TEXT_POSITIONS, plain.tokens_per_image(False))
    index = next(i for i in range(40) if (s := scene_for(5, i)[0]).text is not None and s.text.legible)
    items, views = questions(processor, seed=5, scenes=index + 1, families=["reading"], high_res=False, max_shapes=5,
                             max_length=2048, oracle_vision=True, oracle_text="tokens")
    item = next(i for i in items if i["scene"] == index)
    assert views.shape[1] == CELLS + TEXT_POSITIONS
    batch = Collator(processor.tokenizer.pad_token_id)([{**item, "pixel_values": views[index][None]}])
    seen = {}
    model.language_model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
        placed = seen["inputs_embeds"][batch["input_ids"] == model.image_token_id]
        assert placed.shape[0] == model.tokens_per_image
        assert torch.allclose(placed[: CELLS + TEXT_POSITIONS], model.projector(views[index]))
        assert not placed[CELLS + TEXT_POSITIONS :].any()
        with pytest.raises(ValueError, match="oracle rows per image"):
            model(batch["input_ids"], batch["attention_mask"], torch.cat([batch["pixel_values"]] * 2, 1))


def test_probe_with_oracle_positions_and_the_layout_checks(run):
    result = probe(run, "llava-tiny", ["position"], oracle_vision=True, oracle_positions=True, layout="cells-96", **SMALL)
    assert result["settings"]["oracle_positions"] is True and result["settings"]["layout"] == "cells-96"
    model, _ = build_model(run, "llava-tiny", fresh_lm=False, seed=0, oracle_vision=True, oracle_positions=True)
    assert model.projector[0].in_features == FEATURES + 2 * GRID
    with pytest.raises(ValueError, match="needs oracle_vision"):
        probe(run, "llava-tiny", ["position"], oracle_positions=True, **SMALL)
    with pytest.raises(ValueError, match="oracle_text adds the text's characters"):
        probe(run, "llava-tiny", ["reading"], oracle_text="cell", **SMALL)
    with pytest.raises(ValueError, match="one of cell, tokens"):
        probe(run, "llava-tiny", ["reading"], oracle_vision=True, oracle_text=True, **SMALL)
    with pytest.raises(ValueError, match="48-px views but layout thirds-128 cuts 64-px ones: pass --vision"):
        probe(run, "llava-tiny", ["position"], layout="thirds-128", **SMALL)


def test_probe_with_lora_trains_only_the_lora_and_the_projector_or_adapters(run):
    from training.tiny.probe import with_lora

    for oracle in (True, False):
        model = with_lora(build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, oracle_vision=oracle)[0], rank=2)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        part = ".projector." if oracle else ".adapters."
        assert trainable == {name for name, _ in model.named_parameters() if "lora_" in name or part in name}
        assert any(part in name for name in trainable) and any("lora_" in name for name in trainable)
        assert any(".q_proj.lora_A" in name for name in trainable) and any(".down_proj.lora_B" in name for name in trainable)
        result = probe(run, "sparsecut-tiny", ["count"], oracle_vision=oracle, lora_rank=2, llm_lr=1e-3, **SMALL)
        again = probe(run, "sparsecut-tiny", ["count"], oracle_vision=oracle, lora_rank=2, llm_lr=1e-3, **SMALL)
        assert result["final_loss"] == again["final_loss"] and result["settings"]["lora_rank"] == 2
        assert result["settings"]["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        probe(run, "llava-tiny", ["count"], lora_rank=-1, **SMALL)


def test_probe_with_the_small_delta_levers(run):
    """LoRA on the attention projections only, and one-layer adapters: the deltas a shipped member can afford."""
    from training.tiny.probe import with_lora

    model = with_lora(build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, adapter_mlp="linear",
                                  attention_scope="local", region_bias=4.0)[0], rank=2, modules="attention")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(".o_proj.lora_A" in n for n in trainable) and not any(".mlp." in n and "lora_" in n for n in trainable)
    assert any(".adapters." in n and ".linear_1." in n for n in trainable) and not any(".linear_2." in n for n in trainable)
    assert any(n.endswith(".attention.region_bias") for n in trainable)
    result = probe(run, "sparsecut-tiny", ["count"], lora_rank=2, lora_modules="attention", adapter_mlp="linear",
                   attention_scope="local", region_bias=4.0, **SMALL)
    assert result["settings"]["lora_modules"] == "attention" and result["settings"]["adapter_mlp"] == "linear"
    assert result["settings"]["attention_scope"] == "local" and result["settings"]["region_bias"] == 4.0
    assert result["settings"]["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_probe_pattern_replaces_the_members_shortcuts_and_keeps_its_fusion(run):
    """--pattern llava: the member's fused adapter on one shortcut into the LLM's input (where the oracle feeds it)."""
    member, _ = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0)
    single, _ = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, pattern="llava")
    layers = single.config.vision_config.num_hidden_layers
    assert single.config.shortcut_pairs == [(layers - 1, 1)] and len(member.config.shortcut_pairs) > 1
    assert single.config.high_res and single.config.adapter_attention  # the cross-attention over the crops stays
    result = probe(run, "sparsecut-tiny", ["count"], pattern="1:2", **SMALL)
    assert result["settings"]["shortcuts"] == [[1, 2]]
    with pytest.raises(ValueError, match="Unknown shortcut pattern 'sideways'"):
        probe(run, "sparsecut-tiny", ["count"], pattern="sideways", **SMALL)
    concat = probe(run, "sparsecut-tiny", ["count"], pattern="llava", high_res_fusion="concat", **SMALL)
    assert concat["settings"]["high_res_fusion"] == "concat"
    model, processor = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, high_res_fusion="concat")
    assert processor.tokens_per_image(True) == model.config.num_views * model.config.image_seq_length  # crops in context
    with pytest.raises(ValueError, match="pattern replaces the member's shortcuts"):
        probe(run, "sparsecut-tiny", ["count"], pattern="llava", oracle_vision=True, **SMALL)


def test_probe_with_reading_tokens_trains_them_with_the_adapters_and_records_them(run):
    from training.tiny.probe import with_lora

    model, processor = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, reading_tokens=2)
    assert processor.tokens_per_image(True) == model.config.image_seq_length + 2
    trainable = {name for name, p in with_lora(model, rank=2).named_parameters() if p.requires_grad}
    assert any(".reading_adapter.queries" in name for name in trainable)
    result = probe(run, "sparsecut-tiny", ["reading"], reading_tokens=2, text_probability=1.0, **SMALL)
    again = probe(run, "sparsecut-tiny", ["reading"], reading_tokens=2, text_probability=1.0, **SMALL)
    assert result["final_loss"] == again["final_loss"] and result["scores"] == again["scores"]
    assert result["settings"]["reading_tokens"] == 2 and result["settings"]["reading_layer"] == model.config.reading_layer
    with pytest.raises(ValueError, match="reading tokens read a real tower's crops"):
        probe(run, "sparsecut-tiny", ["reading"], oracle_vision=True, reading_tokens=2, **SMALL)


def test_init_continues_a_trained_member_and_scores_it_before_the_first_step(run, tmp_path):
    model, processor = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # a "trained" member: adapters unlike the fresh ones build_model would make again
        for name, weight in model.named_parameters():
            if ".adapters." in name:
                weight.add_(0.05 * torch.randn_like(weight))
    model.save_pretrained(tmp_path / "member")
    processor.save_pretrained(tmp_path / "member")
    families = ["position", "relation"]
    test, views = questions(processor, seed=split_seed(0, "test"), scenes=4, families=families, high_res=True,
                            max_shapes=5, max_length=2048, layout=LAYOUT)  # the probe's held-out questions
    expected = exact_match(model, test, views, Collator(processor.tokenizer.pad_token_id))
    result = probe(None, "sparsecut-tiny", families, eval_every=1, init=str(tmp_path / "member"), lora_rank=2, **SMALL)
    assert [point["step"] for point in result["curve"]] == [0, 1, 2]
    assert result["curve"][0]["scores"] == expected  # the saved member, reloaded, before any step
    assert set(expected) == {"position", "relation", "overall"} and result["settings"]["init"] == str(tmp_path / "member")
    other = probe(None, "sparsecut-tiny", ["position"], init=str(tmp_path / "member"), score_families=families, **SMALL)
    assert set(other["scores"]) == set(expected) and other["questions"] == len(test)  # scored on a family not trained on
    with pytest.raises(ValueError, match="drop oracle-vision, caption-steps, adapter-mlp"):
        probe(None, "sparsecut-tiny", families, init=str(tmp_path / "member"), oracle_vision=True, caption_steps=1,
              adapter_mlp="linear", **SMALL)


def test_a_reading_tower_with_trained_reading_trains_the_fresh_reading_adapter_alone_or_with_a_lora(run, tmp_path):
    from training.tiny.probe import with_lora

    model, processor = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, reading_tokens=2)
    model.save_pretrained(tmp_path / "member")
    processor.save_pretrained(tmp_path / "member")
    tower = backbone_dirs(run)[0]
    result = probe(None, "sparsecut-tiny", ["reading"], init=str(tmp_path / "member"), reading_tower=tower,
                   trained="reading", text_probability=1.0, **SMALL)
    with_tower, _ = build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, reading_tokens=2)
    with_reading_tower(with_tower, tower)
    adapter = with_tower.model.reading_adapter
    own = sum(p.numel() for n, p in adapter.named_parameters() if not n.startswith("vision_tower."))
    assert result["settings"]["trainable_params"] == own  # not its tower, the shortcuts' adapters or the LLM
    assert result["settings"]["reading_tower"] and result["settings"]["trained"] == "reading"
    with_lora_too = probe(None, "sparsecut-tiny", ["reading"], init=str(tmp_path / "member"), reading_tower=tower,
                          trained="reading+lora", lora_rank=2, lora_modules="attention", text_probability=1.0, **SMALL)
    lora_model = with_lora(build_model(run, "sparsecut-tiny", fresh_lm=False, seed=0, reading_tokens=2)[0], 2, "attention")
    lora = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" in n)
    assert lora and with_lora_too["settings"]["trainable_params"] == own + lora  # not the shortcuts' adapters
    with pytest.raises(ValueError, match="drop lora_rank and llm_lr"):
        probe(None, "sparsecut-tiny", ["reading"], init=str(tmp_path / "member"), trained="reading", lora_rank=2, **SMALL)
    with pytest.raises(ValueError, match="give lora_rank > 0"):
        probe(None, "sparsecut-tiny", ["reading"], init=str(tmp_path / "member"), trained="reading+lora", **SMALL)
    with pytest.raises(ValueError, match="the member needs reading tokens"):
        probe(run, "sparsecut-tiny", ["reading"], trained="reading", **SMALL)
    with pytest.raises(ValueError, match="has no reading tokens"):
        probe(run, "sparsecut-tiny", ["reading"], reading_tower=tower, **SMALL)


def test_the_cli_needs_a_run_or_a_trained_member(capsys):
    for argv in ([], ["--run", "x", "--init", "sparsecut-tiny"]):
        with pytest.raises(SystemExit):
            main(argv + ["--steps", "1"])
        assert "give --run" in capsys.readouterr().err
