"""python -m training.tiny --quick: every stage of the family pipeline, a few steps each, through the training CLI,
then the export in the zoo's delta format and the scoring of the exported checkpoints; a rerun resumes."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecut import SparseCutForConditionalGeneration
from sparsecut.zoo import LLM_PREFIXES
from training.tiny.__main__ import QUICK, main
from training.tiny.family import Budget, budget_with
from training.tiny.progress import report, stage_progress

MEMBERS = "sparsecut-tiny,llava-tiny"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_backbones):
    """One quick pipeline run on a tiny random LLM (SmolLM2's place; the command is the same)."""
    root = tmp_path_factory.mktemp("quick")
    os.environ["SPARSECUT_CACHE"] = str(root / "cache")
    try:
        argv = ["--output", str(root / "run"), "--quick", "--cpu", "--jobs", "2", "--models", MEMBERS,
                "--budget", "stage2_steps=3", "--text", tiny_backbones["text"], "--mixed-precision", "no"]
        assert main(argv) == 0
        yield root / "run", argv
    finally:
        del os.environ["SPARSECUT_CACHE"]


def test_quick_pipeline_trains_ships_and_scores_two_members(quick_run):
    run, _ = quick_run
    results = json.loads((run / "results.json").read_text())
    assert set(results["results"]) == {"sparsecut-tiny", "llava-tiny"}
    for scores in results["results"].values():
        assert 0.0 <= scores["overall"] <= 1.0 and scores["count"] > 20
    sparse = SparseCutForConditionalGeneration.from_pretrained(run / "models" / "sparsecut-tiny")
    llava = SparseCutForConditionalGeneration.from_pretrained(run / "models" / "llava-tiny")
    assert sparse.config.high_res and sparse.config.pattern == "sparse-uniform" and len(sparse.config.shortcuts) == 7
    assert sparse.config.high_res_fusion == "cross-attention"  # the paper's (stack trained worse: README, step (l))
    assert sparse.config.reading_tokens == 3 and llava.config.reading_tokens == 0  # README, step (n)
    assert llava.config.mode == "llava"  # pattern llava, no high-res, projector only
    assert sparse.config.vision_config.image_size == 48  # the cells-96 layout's low-res view
    table = (run / "results.md").read_text()
    assert "| sparsecut-tiny |" in table and "| llava-tiny |" in table and "existence F1" in table
    tower = json.loads((run / "backbones" / "backbones.json").read_text())
    assert (tower["tower_steps"], tower["tower_scenes"], tower["tower_spell"]) == (QUICK.tower_steps, QUICK.tower_images, False)
    shipped = run / "family"  # the zoo's delta format, scored as shipped
    manifest = json.loads((shipped / "family.json").read_text())
    assert manifest["models"].keys() == {"sparsecut-tiny", "llava-tiny"} and manifest["base"]["text"].endswith("text")
    for name in manifest["models"]:
        stored = load_file(shipped / "models" / name / "model.safetensors")
        assert not any(k.startswith(LLM_PREFIXES) for k in stored)  # the LLM comes from the base + the LoRA
        assert (shipped / "models" / name / "lora" / "adapter_model.safetensors").exists()
    assert json.loads((shipped / "results.json").read_text())["results"] == results["results"]
    card = (shipped / "MODEL_CARD.md").read_text()
    assert "python -m training.tiny --output" in card and "| sparsecut-tiny |" in card and results["run"]["jobs"] == 2
    assert "| `sparsecut-tiny` | sparse-uniform | yes (cross-attention, 3 reading tokens) |" in card
    assert "spelled by position" not in card and "| rank 4 on q, k, v, o, lr 0.003 |" in card
    assert results["run"]["budget"] == {**QUICK.__dict__, "stage2_steps": 3} and "3 steps; batch 8" in card
    assert set(results["run"]["stage_seconds"]["llava-tiny"]) == {"stage1", "reading", "stage2"}
    assert results["run"]["stage_seconds"]["llava-tiny"]["reading"] == 0.0  # no reading stage
    assert results["run"]["threads"] == max(1, (os.cpu_count() or 1) // 2)  # the cores shared by the two jobs


def test_a_rerun_skips_finished_stages_and_resumes_an_interrupted_one(quick_run):
    run, argv = quick_run
    sparse_metrics = (run / "models" / "sparsecut-tiny" / "metrics.jsonl").read_text()
    before = load_file(run / "models" / "llava-tiny" / "model.safetensors")
    (run / "models" / "llava-tiny" / "training_summary.json").unlink()  # its stage 2 "interrupted" after its last checkpoint
    assert main([*argv, "--jobs", "1", "--threads", "1"]) == 0  # resumed by another invocation
    assert (run / "models" / "sparsecut-tiny" / "metrics.jsonl").read_text() == sparse_metrics  # not retrained
    log = (run / "models" / "llava-tiny.log").read_text()
    assert "Resumed from" in log and log.count("Resumed from") == 1  # stage 2 only, from its checkpoint
    after = load_file(run / "models" / "llava-tiny" / "model.safetensors")
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    kept = sorted(os.listdir(run / "family" / "answers"))  # each shipped member's answers, reused by the rerun
    assert kept == ["llava-tiny.json", "sparsecut-tiny.json"]
    trained_by = json.loads((run / "results.json").read_text())["members"]["llava-tiny"]
    assert trained_by["command"] == "python -m training.tiny " + " ".join(argv)  # who began it, and how
    assert trained_by["jobs"] == 2 and trained_by["threads"] == max(1, (os.cpu_count() or 1) // 2)


def test_a_rescore_generates_only_the_answers_a_changed_question_or_a_reshipped_member_needs(quick_run, monkeypatch):
    from training.tiny import ship

    run, argv = quick_run
    family, data = run.parent / "rescored-family", run.parent / "rescored-data"
    shutil.copytree(run / "family", family)
    data.mkdir()
    (data / "images").symlink_to(run / "data" / "images")
    records = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    records[1]["question"] = records[1]["question"].replace("?", " in this picture?", 1)  # one question changed
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    asked = []
    real_predict = ship.predict
    monkeypatch.setattr(ship, "predict", lambda model, processor, chunk, *args, **kwargs:
                        asked.append(chunk) or real_predict(model, processor, chunk, *args, **kwargs))
    names = ["sparsecut-tiny", "llava-tiny"]
    ship.score_shipped(str(family), names, data_dir=str(data), progress=False, answers_dir=str(family / "answers"))
    assert [[r["question"] for r in chunk] for chunk in asked] == [[records[1]["question"]]] * 2  # one answer each
    (family / "answers" / "llava-tiny.json").write_text(json.dumps({"files": "other-weights", "answers": {}}))
    asked.clear()
    scored = ship.score_shipped(str(family), names, data_dir=str(data), progress=False,
                                answers_dir=str(family / "answers"))
    assert [len(chunk) for chunk in asked] == [len(records)]  # llava-tiny's answers were for other files: all again
    kept = json.loads((family / "answers" / "llava-tiny.json").read_text())
    assert list(kept["answers"]) == ship.question_keys(records, str(data / "images"))
    assert kept["files"] != "other-weights"
    assert scored["results"] == ship.score_shipped(str(family), names, data_dir=str(data), progress=False,
                                                   answers_dir=str(family / "answers"))["results"] and len(asked) == 1
    elsewhere = run.parent / "shipped-elsewhere"  # the run shipped again, to another folder: its own answers reused
    assert main([*argv, "--ship", str(elsewhere)]) == 0
    assert len(asked) == 1 and sorted(os.listdir(elsewhere / "answers")) == ["llava-tiny.json", "sparsecut-tiny.json"]
    scores = [json.loads((folder / "results.json").read_text())["results"] for folder in (elsewhere, run)]
    assert scores[0] == scores[1]


def test_members_trained_on_a_shipped_tower_join_its_family_and_another_tower_replaces_it(quick_run, tiny_backbones):
    from training.tiny.family import build_backbones
    from training.tiny.export import export_family
    from sparsecut import SparseCutProcessor

    run, argv = quick_run
    joined = run.parent / "joined"
    shutil.copytree(run / "family", joined)
    more = run.parent / "more"
    argv = ["--output", str(more), "--quick", "--cpu", "--jobs", "1", "--models", "sparsecut-tiny-lowres",
            "--budget", "stage2_steps=3,lora_rank=2,lora_modules=all,relation_turns=1", "--text", tiny_backbones["text"],
            "--mixed-precision", "no", "--tower", str(joined), "--ship", str(joined)]
    assert main(argv) == 0
    manifest = json.loads((joined / "family.json").read_text())
    assert list(manifest["models"]) == ["sparsecut-tiny", "llava-tiny", "sparsecut-tiny-lowres"]
    results = json.loads((joined / "results.json").read_text())
    assert set(results["results"]) == set(results["members"]) == set(manifest["models"])
    first = json.loads((run / "results.json").read_text())
    assert results["results"]["sparsecut-tiny"] == first["results"]["sparsecut-tiny"]  # the same files: scores kept
    assert results["members"]["llava-tiny"] == first["members"]["llava-tiny"]  # how it was trained: kept
    assert "--tower" in results["members"]["sparsecut-tiny-lowres"]["command"]
    card = (joined / "MODEL_CARD.md").read_text()
    assert "1. `python -m training.tiny" in card and "2. `python -m training.tiny" in card and "--tower" in card
    assert "| `sparsecut-tiny-lowres` | sparse-uniform | no |" in card and "trained with 2 different budgets**, differing in `lora_rank`, `lora_modules`" in card
    assert "`relation_turns` 0 for `sparsecut-tiny`, `llava-tiny`, 1 for `sparsecut-tiny-lowres`" in card
    data = json.loads((more / "data" / "instruct.json").read_text())
    assert any(" above the " in turn["value"] or " left of the " in turn["value"]  # the drill's turn, after the regular ones
               for record in data for turn in record["conversations"][2 * QUICK.turns::2])
    assert "| rank 2 on q, k, v, o, gate, up, down, lr 0.003 |" in card and "| rank 4 on q, k, v, o, lr 0.003 |" in card
    lora = json.loads((joined / "models" / "sparsecut-tiny-lowres" / "lora" / "adapter_config.json").read_text())
    assert lora["r"] == 2 and "mlp" in json.dumps(lora["target_modules"])  # the LoRA the budget asked for, shipped
    vision = load_file(more / "backbones" / "vision" / "model.safetensors")
    stored = load_file(joined / "shared" / "vision.safetensors")
    assert vision.keys() == stored.keys() and all((vision[k].half() == stored[k]).all() for k in vision)
    with pytest.raises(ValueError, match="--seed 0"):  # its members are scored on seed 0's held-out split
        build_backbones(str(run.parent / "other-seed"), QUICK, 1, tiny_backbones["text"], str(joined))
    with pytest.raises(ValueError, match="its own pretraining"):  # a run keeps the tower it started with
        build_backbones(str(run), QUICK, 0, tiny_backbones["text"], str(joined))
    model = SparseCutForConditionalGeneration.from_pretrained(more / "models" / "sparsecut-tiny-lowres")
    with torch.no_grad():
        for weight in model.model.vision_tower.parameters():  # another tower: the family is replaced whole
            weight.add_(0.5)
    stayed = export_family({"sparsecut-tiny-lowres": model}, SparseCutProcessor.from_pretrained(more / "models" / "sparsecut-tiny-lowres"),
                           str(joined), base=manifest["base"], loras={"sparsecut-tiny-lowres": str(more / "models" / "sparsecut-tiny-lowres" / "lora")},
                           sources={"sparsecut-tiny-lowres": str(more / "models" / "sparsecut-tiny-lowres")})
    assert stayed == [] and list(json.loads((joined / "family.json").read_text())["models"]) == ["sparsecut-tiny-lowres"]
    assert sorted(os.listdir(joined / "models")) == ["sparsecut-tiny-lowres"]
    assert sorted(os.listdir(joined / "answers")) == ["sparsecut-tiny-lowres.json"]  # the departed members': gone


def test_a_continued_member_trains_its_shipped_lora_on_and_the_card_names_its_history(quick_run, tiny_backbones):
    run, _ = quick_run
    family = run.parent / "continued-family"
    shutil.copytree(run / "family", family)
    before = json.loads((family / "results.json").read_text())
    shipped_lora = load_file(family / "models" / "sparsecut-tiny" / "lora" / "adapter_model.safetensors")
    out = run.parent / "continued"
    argv = ["--output", str(out), "--quick", "--cpu", "--jobs", "1", "--models", "sparsecut-tiny", "--text",
            tiny_backbones["text"], "--mixed-precision", "no", "--budget",
            "stage2_steps=2,relation_turns=1,tally_turns=1,recount_turns=1,stage2_lr=1e-3",
            "--continue-from", str(family), "--ship", str(family)]
    assert main(argv) == 0
    assert not (out / "models" / "sparsecut-tiny-stage1").exists()  # no stage 1: stage 2 from the shipped member
    start = load_file(out / "models" / "sparsecut-tiny-start" / "lora" / "adapter_model.safetensors")
    assert start.keys() == shipped_lora.keys() and all(torch.equal(start[k], shipped_lora[k].float()) for k in start)
    trained = load_file(out / "models" / "sparsecut-tiny" / "lora" / "adapter_model.safetensors")
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)  # trained on
    assert stage_progress(str(out / "models" / "sparsecut-tiny"), 2)[0] == 2  # the continuation's own steps
    after = json.loads((family / "results.json").read_text())
    record = after["members"]["sparsecut-tiny"]
    assert record["continued_from"] == before["members"]["sparsecut-tiny"] and record["budget"]["stage1_steps"] == 0
    assert after["members"]["llava-tiny"] == before["members"]["llava-tiny"]  # the other member: as it was
    assert after["results"]["llava-tiny"] == before["results"]["llava-tiny"]  # its files unchanged: not scored again
    assert after["scored"]["llava-tiny"] == before["scored"]["llava-tiny"] != after["scored"]["sparsecut-tiny"]
    unscored = [(folder / "answers" / "llava-tiny.json").read_bytes() for folder in (family, run / "family")]
    assert unscored[0] == unscored[1]
    answers = json.loads((family / "answers" / "sparsecut-tiny.json").read_text())  # the continued member's: new
    assert answers["files"] == after["scored"]["sparsecut-tiny"].rsplit("-", 1)[0]
    assert len(answers["answers"]) == after["questions"]
    card = (family / "MODEL_CARD.md").read_text()
    assert "1. `python -m training.tiny" in card and "2. `python -m training.tiny" in card and "--continue-from" in card
    assert "**`sparsecut-tiny` was trained further**" in card and "by command 2, 2 more stage-2 steps (LoRA lr 0.001" in card
    assert all(f"`{field}` 1 (was 0)" in card for field in ("relation_turns", "tally_turns", "recount_turns"))
    assert "`stage2_lr` 0.001 (was 0.003)" in card
    row = next(line for line in card.splitlines() if line.startswith("| `sparsecut-tiny` |"))
    assert " + " in row.split("|")[6] and "| 1, then 2 |" in row and "; then cpu, no, alone" in row  # stage 2 minutes: both runs
    assert "steps; batch 8" in card and f"stage 1 (adapters only, linear MLP, lr {QUICK.stage1_lr}) {QUICK.stage1_steps}" in card
    with pytest.raises(ValueError, match="continues a shipped member"):  # its rerun must say --continue-from again
        main([arg for arg in argv[:-4]])
    with pytest.raises(SystemExit):  # a LoRA the shipped member does not have
        main(["--output", str(run.parent / "other"), "--quick", "--cpu", "--models", "sparsecut-tiny", "--text",
              tiny_backbones["text"], "--budget", "lora_rank=8", "--continue-from", str(family)])
    with pytest.raises(SystemExit):  # the tower is the continued family's
        main([*argv, "--tower", str(run / "family")])


def _with(argv: list[str], **values: str) -> list[str]:
    """``argv`` with the values of the given flags replaced."""
    return [values.get(argv[i - 1], arg) if i else arg for i, arg in enumerate(argv)]


def test_a_reading_stage_gives_a_continued_members_reading_tokens_a_tower_and_trains_them_with_the_lora(
        quick_run, tiny_backbones, tmp_path):
    from sparsecut.zoo import VISION_PREFIX
    from training.tiny.continued import READING_PREFIX
    from training.tiny.dense import main as train_tower
    from training.tiny.ship import assets_at

    run, _ = quick_run
    family = tmp_path / "family"
    shutil.copytree(run / "family", family)
    tower = tmp_path / "tower"
    assert train_tower(["--output", str(tower), "--layout", "cells-96", "--scenes", "8", "--steps", "2", "--seed", "5",
                        "--spell"]) == 0  # any dense tower of the layout: a reading tower is not the run's tower
    out = tmp_path / "read"
    argv = ["--output", str(out), "--quick", "--cpu", "--jobs", "1", "--models", "sparsecut-tiny", "--text",
            tiny_backbones["text"], "--mixed-precision", "no", "--budget", "stage2_steps=1,reading_steps=2",
            "--continue-from", str(family), "--reading-tower", str(tower), "--ship", str(family)]
    assert main(argv) == 0
    models = out / "models"
    start, read = (load_file(models / name / "model.safetensors") for name in ("sparsecut-tiny-start", "sparsecut-tiny-reading"))
    own = {k: v for k, v in read.items() if k.startswith(READING_PREFIX + "vision_tower.")}
    assert own and all(torch.equal(v, load_file(tower / "model.safetensors")[k[len(READING_PREFIX + "vision_tower."):]])
                       for k, v in own.items())  # the reading tower, frozen
    assert all(torch.equal(v, start[k]) for k, v in read.items() if k.startswith("model.adapters."))  # shortcuts' too
    loras = {name: load_file(models / name / "lora" / "adapter_model.safetensors")
             for name in ("sparsecut-tiny-start", "sparsecut-tiny-reading", "sparsecut-tiny-start-read")}
    assert any(not torch.equal(v, loras["sparsecut-tiny-start"][k]) for k, v in loras["sparsecut-tiny-reading"].items())
    assert all(torch.equal(v, loras["sparsecut-tiny-reading"][k]) for k, v in loras["sparsecut-tiny-start-read"].items())
    assert stage_progress(str(models / "sparsecut-tiny-reading"), 2)[0] == 2
    grafted = load_file(models / "sparsecut-tiny-start-read" / "model.safetensors")  # stage 2's start: LLM unmerged
    assert all(torch.equal(v, read[k] if k.startswith(READING_PREFIX) else start[k]) for k, v in grafted.items())
    assert set(grafted) == {k for k in start if not k.startswith(READING_PREFIX)} | {k for k in read if k.startswith(READING_PREFIX)}
    assert json.loads((family / "models" / "sparsecut-tiny" / "config.json").read_text())["reading_tower"]
    shipped = load_file(family / "models" / "sparsecut-tiny" / "model.safetensors")  # the reading tower in the delta
    assert any(k.startswith(READING_PREFIX + "vision_tower.") for k in shipped) and not any(k.startswith(VISION_PREFIX) for k in shipped)
    with assets_at(str(family)):
        model = SparseCutForConditionalGeneration.from_pretrained("sparsecut-tiny")
    assert model.config.reading_tower and model.model.reading_adapter.vision_tower is not None
    record = json.loads((family / "results.json").read_text())["members"]["sparsecut-tiny"]
    assert record["reading_tower"]["from"] == str(tower) and record["reading_tower"]["spell"]
    assert record["budget"]["reading_steps"] == 2 and record["stage_seconds"]["reading"] > 0
    card = (family / "MODEL_CARD.md").read_text()
    assert ("after a reading stage of 2 steps (24 scenes; the reading adapter afresh at lr 0.001 and the LoRA at "
            "0.0015, the shortcuts' adapters frozen)") in card
    assert "--scenes 8 --steps 2 --seed 5 --spell`" in card and "3 reading tokens through a tower of their own" in card
    alone = tmp_path / "alone"  # a reading stage with look-up turns, and no stage 2 after it
    shutil.copytree(family, tmp_path / "family-alone")
    assert main(_with(argv, **{"--output": str(alone), "--budget": "stage2_steps=0,reading_steps=2,reading_look_ups=1",
                               "--ship": str(tmp_path / "family-alone")})) == 0
    conversations = [r["conversations"] for r in json.loads((alone / "data" / "reading.json").read_text())]
    assert all(len(c) == 4 and c[0]["value"].startswith("<image>\n") for c in conversations)  # a look-up after each
    assert sum("What is written" in c[0]["value"] for c in conversations) >= len(conversations) // 2  # reading first
    assert not (alone / "models" / "sparsecut-tiny").exists() and not (alone / "models" / "sparsecut-tiny-start-read").exists()
    lora = load_file(alone / "models" / "sparsecut-tiny-reading" / "lora" / "adapter_model.safetensors")
    shipped = load_file(tmp_path / "family-alone" / "models" / "sparsecut-tiny" / "lora" / "adapter_model.safetensors")
    assert set(shipped) == set(lora) and all(torch.allclose(v.float(), lora[k], atol=1e-3) for k, v in shipped.items())
    record = json.loads((tmp_path / "family-alone" / "results.json").read_text())["members"]["sparsecut-tiny"]
    assert record["stage_seconds"]["stage2"] == 0.0 and record["stage_seconds"]["reading"] > 0
    card = (tmp_path / "family-alone" / "MODEL_CARD.md").read_text()
    assert ("then by command 3, a reading stage of 2 steps (24 scenes, each reading question followed by 1 look-up "
            "turn; the reading adapter afresh") in card  # continuing the member of the run above
    again = tmp_path / "again"  # a later reading stage trains on the reading adapter and tower the member has now
    at = argv.index("--reading-tower")
    assert main(_with(argv[:at] + argv[at + 2:], **{"--output": str(again), "--budget": "stage2_steps=0,reading_steps=2",
                                                     "--continue-from": str(tmp_path / "family-alone"),
                                                     "--ship": str(tmp_path / "family-alone")})) == 0
    start, after = (load_file(again / "models" / name / "model.safetensors")
                    for name in ("sparsecut-tiny-start", "sparsecut-tiny-reading"))
    own = [k for k in start if k.startswith(READING_PREFIX + "vision_tower.")]
    assert own and all(torch.equal(start[k], after[k]) for k in own)  # the member's reading tower, kept and frozen
    adapter = [k for k in start if k.startswith(READING_PREFIX) and k not in own]
    assert any(not torch.equal(start[k], after[k]) for k in adapter)  # its reading adapter trained on
    shipped_before = load_file(alone / "models" / "sparsecut-tiny-reading" / "model.safetensors")
    assert all(torch.allclose(start[k], shipped_before[k], atol=1e-2) for k in adapter)  # from the member as shipped
    card = (tmp_path / "family-alone" / "MODEL_CARD.md").read_text()
    assert ("then by command 4, a reading stage of 2 steps (24 scenes; the reading adapter the member had (its reading "
            "tower kept)") in card
    assert json.loads((tmp_path / "family-alone" / "results.json").read_text())["members"]["sparsecut-tiny"]["reading_tower"] == {"kept": True}
    at = argv.index("--continue-from")
    for bad in (argv[:at] + argv[at + 2:],  # a reading tower without --continue-from
                _with([a for a in argv if a != str(tower) and a != "--reading-tower"],  # no tower given, and the
                      **{"--continue-from": str(run / "family")}),                        # member has none
                [a.replace("sparsecut-tiny", "llava-tiny") if a == "sparsecut-tiny" else a for a in argv],  # no reading tokens
                [a.replace("reading_steps=2", "reading_look_ups=1") for a in argv],  # look-ups with no reading stage
                _with(argv[:at], **{"--budget": "stage2_steps=0"})):
        with pytest.raises(SystemExit):  # ... and no stage 2 with no reading stage
            main(bad)


def test_a_dense_tower_trained_as_the_run_would_is_reused_and_any_other_refused(tmp_path, tiny_backbones):
    from training.tiny.dense import main as train_tower
    from training.tiny.family import build_backbones

    tower = tmp_path / "tower"
    assert train_tower(["--output", str(tower), "--layout", "cells-96", "--scenes", str(QUICK.tower_images), "--steps",
                        str(QUICK.tower_steps), "--seed", "3"]) == 0  # split_seed(0, "backbone") == 3
    build_backbones(str(tmp_path / "run"), QUICK, 0, tiny_backbones["text"], str(tower))
    record = json.loads((tmp_path / "run" / "backbones" / "backbones.json").read_text())
    assert record["tower_from"] == str(tower) and (record["tower_scenes"], record["tower_spell"]) == (QUICK.tower_images, False)
    built, made = (load_file(folder / "model.safetensors") for folder in (tmp_path / "run" / "backbones" / "vision", tower))
    assert built.keys() == made.keys() and all(torch.equal(built[k], made[k]) for k in made)
    moved = tmp_path / "moved"
    shutil.copytree(tower, moved)
    build_backbones(str(tmp_path / "run"), QUICK, 0, tiny_backbones["text"], str(moved))  # the same tower, moved: resumed
    save_file({k: v + 1 if i == 0 else v for i, (k, v) in enumerate(made.items())}, moved / "model.safetensors")
    with pytest.raises(ValueError, match="was started with the tower of"):  # other weights at a known place: refused
        build_backbones(str(tmp_path / "run"), QUICK, 0, tiny_backbones["text"], str(moved))
    with pytest.raises(ValueError, match=r"seed 3 \(this run: 1003\)"):  # another seed's run draws another split
        build_backbones(str(tmp_path / "seed-1"), QUICK, 1, tiny_backbones["text"], str(tower))
    other = tmp_path / "spelled"
    assert train_tower(["--output", str(other), "--layout", "cells-96", "--scenes", str(QUICK.tower_images), "--steps",
                        "3", "--seed", "3", "--spell"]) == 0
    with pytest.raises(ValueError, match=r"steps 3 \(this run: 2\), spell True \(this run: False\).*--seed 3`"):
        build_backbones(str(tmp_path / "other"), QUICK, 0, tiny_backbones["text"], str(other))
    assert not (tmp_path / "other" / "backbones" / "backbones.json").exists()  # nothing half-built is taken as done


def test_auto_mixed_precision_times_the_trainers_step_and_a_rerun_keeps_its_decision(quick_run, tmp_path, monkeypatch):
    import sparsecut.precision as precision
    from training.tiny.family import cpu_mixed_precision

    run, _ = quick_run
    root = tmp_path / "run"
    root.mkdir()
    for part in ("backbones", "data"):
        (root / part).symlink_to(run / part)
    timed = {}
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "autocast_step_speedup", lambda model, inputs: timed.update(inputs) or 1.5)
    assert cpu_mixed_precision(str(root), Budget(batch=2), 1) == ("bf16", 1.5)
    keep = timed["logits_to_keep"]  # the LM head only at the labelled positions, as the trainer computes it
    assert keep.dtype == torch.bool and keep.shape == timed["input_ids"].shape and 0 < keep.sum() < keep.numel()
    monkeypatch.setattr(precision, "autocast_step_speedup", lambda model, inputs: 0.5)  # a new timing: fp32
    assert cpu_mixed_precision(str(root), Budget(batch=2), 1) == ("bf16", 1.5)  # the run keeps what it started with
    (root / "mixed_precision.json").unlink()
    assert cpu_mixed_precision(str(root), Budget(batch=2), 1) == ("no", 0.5)


def test_progress_reports_steps_and_an_eta_from_measured_seconds(tmp_path):
    for name, stage, steps in [("a", "-stage1", 4), ("a", "", 2), ("b", "-stage1", 1)]:
        folder = tmp_path / "models" / (name + stage)
        folder.mkdir(parents=True)
        lines = [json.dumps({"step": s, "time": 100.0 + 2.0 * s * (3 if stage == "" else 1)}) for s in range(1, steps + 1)]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "models" / "a-stage1" / "training_summary.json").write_text("{}")
    line = report(str(tmp_path), ["a", "b"], {"stage1": 4, "stage2": 10}, jobs=1)
    # stage 1: 2 s/step (3 + 0 timed steps), stage 2: 6 s/step (1 timed); left: 3 stage-1 steps, 18 stage-2 steps
    assert line.startswith("25% of the family's steps (a stage2 2/10; b stage1 1/4)") and "ETA 2 min" in line
    assert "ETA 1 min" in report(str(tmp_path), ["a", "b"], {"stage1": 4, "stage2": 10}, jobs=2)
    resumed = tmp_path / "models" / "b-stage1" / "metrics.jsonl"  # killed after step 3, resumed from step 1's checkpoint
    resumed.write_text("".join(json.dumps({"step": s, "time": t}) + "\n" for s, t in
                               [(1, 0.0), (2, 2.0), (3, 4.0), (2, 100.0), (3, 103.0), (4, 106.0)]))
    assert stage_progress(str(resumed.parent), 4) == (4, 3, 2.0 + 3.0 + 3.0)  # steps 2-4 timed once; no gap counted


def test_the_cards_data_line_names_each_drill_a_budget_adds():
    from training.tiny.ship import _drilled

    assert _drilled({}) == _drilled({"relation_turns": 0, "tally_turns": 0}) == ""  # recorded before the drills: none
    assert _drilled({"relation_turns": 1, "tally_turns": 2}) == (" and 1 more left-of / above question each (the "
                                                                 "relation drill) and 2 more count questions each (the tally drill)")
    assert _drilled({"recount_turns": 1}) == (" and 1 more count question asked openly, then with lettered numbers "
                                              "each (the recount drill)")
    assert _drilled({"relation_turns": 1, "tally_turns": 1, "balanced_counts": 1}) == (
        " and 1 more left-of / above question each (the relation drill) and 1 more count question each (the tally "
        "drill, answers balanced)")  # only the count drills are balanced
    assert _drilled({"tally_turns": 1, "drills_first": 1}) == (" and 1 more count question each (the tally drill), "
                                                               "the drills' turns asked first")


def test_budget_overrides_change_only_the_named_fields_and_reject_bad_ones(capsys):
    longer = budget_with(Budget(), "stage2_steps=12000, stage2_lr=5e-4,instruct_images=60000")
    assert longer == Budget(stage2_steps=12000, stage2_lr=5e-4, instruct_images=60000)
    assert budget_with(Budget(), "lora_rank=8,lora_modules=all") == Budget(lora_rank=8, lora_modules="all")
    assert budget_with(QUICK, "") == QUICK
    assert budget_with(Budget(relation_turns=2), "relation_turns=0") == Budget()  # a count that may be 0
    assert budget_with(Budget(), "tally_turns=0,relation_turns=1") == Budget(relation_turns=1)
    assert budget_with(Budget(), "recount_turns=1,balanced_counts=1") == Budget(recount_turns=1, balanced_counts=1)
    assert budget_with(Budget(), "relation_turns=1,drills_first=1") == Budget(relation_turns=1, drills_first=1)
    for bad, reason in [("steps=3", "FIELD one of pretrain_images"), ("stage2_steps", "use FIELD=VALUE"),
                        ("stage2_steps=1.5", "takes an integer"), ("stage2_lr=fast", "takes a number"),
                        ("batch=0", "must be positive"), ("lora_modules=mlp", "lora_modules is one of all, attention"),
                        ("relation_turns=-1", "relation_turns must be >= 0"),
                        ("tally_turns=-2", "tally_turns must be >= 0"),
                        ("tally_turns=1,balanced_counts=2", "balanced_counts is 0 .off. or 1 .on."),
                        ("relation_turns=1,balanced_counts=1", "set tally_turns or recount_turns too"),
                        ("relation_turns=1,drills_first=2", "drills_first is 0 .off. or 1 .on."),
                        ("drills_first=1", "set relation_turns, tally_turns or recount_turns too")]:
        with pytest.raises(ValueError, match=reason):
            budget_with(Budget(), bad)
    with pytest.raises(SystemExit):
        main(["--output", "unused", "--budget", "tower_steps=-1"])
    assert "tower_steps must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output", "unused", "--threads", "0"])
    assert "--threads must be at least 1, not 0" in capsys.readouterr().err


def test_paper_tables_at_tiny_scale_from_the_members_scores():
    from training.tiny.family import FAMILY
    from training.tiny.ship import paper_tables

    def scored(overall, reading=0.0, half_width=0.02):
        return {"overall": overall, "overall_interval": (overall - half_width, overall + half_width),
                "families": {"reading": reading}}

    overall = {"sparse-uniform": 0.70, "sparse-top": 0.50, "sparse-reverse-uniform": 0.69, "dense-bottom": 0.72,
               "dense-uniform": 0.60, "sparse-bottom": 0.65, "llava": 0.55}
    results = {name: scored(overall[spec["pattern"]]) for name, spec in FAMILY.items()}
    results["sparsecut-tiny"] = scored(0.8, reading=0.85)
    results["sparsecut-tiny-lowres"]["families"]["reading"] = 0.25
    results["llava-tiny"]["families"]["reading"] = 0.05
    text = paper_tables(results)
    assert "with high-res fusion 85.0%, sparsecut-tiny-lowres 25.0% (+60.0 points" in text and "llava-tiny 5.0%" in text
    rows = [line for line in text.splitlines() if line.startswith("| sparsecut-tiny-") or line.startswith("| llava")]
    assert rows[0].startswith("| sparsecut-tiny-dense-bottom | dense-bottom | 72.0 | 70.0-74.0 |")  # best first
    assert rows[-1].startswith("| llava-tiny |") and len(rows) == 7
    assert "sparse-uniform best of the six: no, dense-bottom is" in text
    assert "over sparse-top +20.0 points (intervals apart)" in text
    assert "over sparse-reverse-uniform +1.0 points (intervals overlap)" in text
    del results["sparsecut-tiny-sparse-top"]  # a family without every pattern member has no Table 3
    assert "Table 3" not in paper_tables(results) and "Table 4" in paper_tables(results)


def test_the_card_says_how_a_high_res_member_fuses_and_reads(tmp_path):
    from training.tiny.ship import _high_res

    for name, config, shown in [("low", {"high_res": False}, "no"),
                                ("fused", {"high_res": True, "high_res_fusion": "stack"}, "yes (stack)"),
                                ("reader", {"high_res": True, "high_res_fusion": "cross-attention", "reading_tokens": 3},
                                 "yes (cross-attention, 3 reading tokens)")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        assert _high_res(str(tmp_path), name) == shown
