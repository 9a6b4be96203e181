"""python -m training.tiny --quick: every stage of the family pipeline, a few steps each, through the training CLI,
then the export in the zoo's format and the scoring of the exported checkpoints."""

import json

import pytest

from sparsecut import SparseCutForConditionalGeneration
from training.tiny.__main__ import QUICK, main
from training.tiny.family import Budget, budget_with


def test_quick_pipeline_trains_ships_and_scores_two_members(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECUT_CACHE", str(tmp_path / "cache"))
    assert main(["--output", str(tmp_path), "--quick", "--cpu", "--jobs", "2", "--models", "sparsecut-tiny,llava-tiny",
                 "--budget", "stage2_steps=3"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["results"]) == {"sparsecut-tiny", "llava-tiny"}
    for scores in results["results"].values():
        assert 0.0 <= scores["overall"] <= 1.0 and scores["count"] > 20
    sparse = SparseCutForConditionalGeneration.from_pretrained(tmp_path / "models" / "sparsecut-tiny")
    llava = SparseCutForConditionalGeneration.from_pretrained(tmp_path / "models" / "llava-tiny")
    assert sparse.config.high_res and sparse.config.pattern == "sparse-uniform" and len(sparse.config.shortcuts) == 7
    assert llava.config.mode == "llava"  # pattern llava, no high-res, projector only
    assert (tmp_path / "backbones" / "text" / "tokenizer.json").exists()
    table = (tmp_path / "results.md").read_text()
    assert "| sparsecut-tiny |" in table and "| llava-tiny |" in table and "existence F1" in table
    assert json.loads((tmp_path / "backbones" / "pretraining.json").read_text())["corpus_texts"] > 0
    shipped = tmp_path / "family"  # the zoo's format, scored as shipped
    assert json.loads((shipped / "family.json").read_text())["models"].keys() == {"sparsecut-tiny", "llava-tiny"}
    assert json.loads((shipped / "results.json").read_text())["results"] == results["results"]
    card = (shipped / "MODEL_CARD.md").read_text()
    assert "python -m training.tiny --output" in card and "| sparsecut-tiny |" in card and results["run"]["jobs"] == 2
    assert results["run"]["budget"] == {**QUICK.__dict__, "stage2_steps": 3} and "3 steps, batch 8" in card


def test_budget_overrides_change_only_the_named_fields_and_reject_bad_ones(capsys):
    longer = budget_with(Budget(), "stage2_steps=12000, stage2_lr=5e-4,instruct_images=60000")
    assert longer == Budget(stage2_steps=12000, stage2_lr=5e-4, instruct_images=60000)
    assert budget_with(QUICK, "") == QUICK
    for bad, reason in [("steps=3", "FIELD one of pretrain_images"), ("stage2_steps", "use FIELD=VALUE"),
                        ("stage2_steps=1.5", "takes an integer"), ("stage2_lr=fast", "takes a number"),
                        ("batch=0", "must be positive")]:
        with pytest.raises(ValueError, match=reason):
            budget_with(Budget(), bad)
    with pytest.raises(SystemExit):
        main(["--output", "unused", "--budget", "clip_steps=-1"])
    assert "clip_steps must be positive" in capsys.readouterr().err
