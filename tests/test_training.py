"""python -m training end to end on tiny backbones and a LLaVA-format fixture written here."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sparsecut import SparseCutForConditionalGeneration
from sparsecut.convert import from_backbones
from training.__main__ import main
from training.checkpoints import complete_checkpoints
from training.recipes import load_recipe

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "white": (250, 250, 250)}
FAST = ["--mixed-precision", "no", "--num-workers", "0", "--cpu", "--num-shortcuts", "3"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield


def write_dataset(root, records_extra=(), n=8) -> dict:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (name, rgb) in enumerate((list(COLOURS.items()) * 4)[:n]):
        Image.new("RGB", (20, 20), rgb).save(images / f"{i}.png")
        records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": f"It is {name}."}]})
    records += list(records_extra)
    (root / "data.json").write_text(json.dumps(records))
    return {"data": str(root / "data.json"), "images": str(images)}


def run(args) -> int:
    return main([str(a) for a in args])


def stage1_args(backbones, data, output, *extra):
    return ["--recipe", "stage1", "--vision", backbones["vision"], "--text", backbones["text"], "--data", data["data"],
            "--images", data["images"], "--output", output, "--global-batch-size", 4, "--per-device-batch-size", 2, *FAST, *extra]


def weights(folder) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_stage1_then_stage2_overfit(tmp_path, tiny_backbones):
    data = write_dataset(tmp_path)
    out1, out2 = tmp_path / "stage1", tmp_path / "stage2"
    assert run(stage1_args(tiny_backbones, data, out1, "--max-steps", 2, "--adapter-attention-scope", "local",
                           "--adapter-region-bias", 4)) == 0
    initial, _ = from_backbones(tiny_backbones["vision"], tiny_backbones["text"], num_shortcuts=3,
                                adapter_attention_scope="local", adapter_region_bias=4.0)
    before, after = initial.state_dict(), weights(out1)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(".adapters." in k for k in changed)  # stage 1: adapters only, every other tensor bitwise equal
    assert all(".gate" in k or "linear" in k or "attention" in k for k in changed)
    assert (out1 / "plan.txt").read_text().count("(frozen)") == 2

    assert run(["--recipe", "stage2", "--model", out1, "--data", data["data"], "--images", data["images"], "--output", out2,
                "--global-batch-size", 8, "--per-device-batch-size", 8, "--epochs", 100, "--learning-rate", 3e-3,
                "--lr-schedule", "constant", "--gradient-checkpointing", "false", "--save-every", 1000, *FAST]) == 0
    losses = [json.loads(line)["loss"] for line in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 100 and losses[-1] <= 0.5 * losses[0]
    s1, s2 = weights(out1), weights(out2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if ".vision_tower." in k)  # stage 2: ViT bitwise equal
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if ".language_model." in k)
    model = SparseCutForConditionalGeneration.from_pretrained(out2)  # the final folder loads directly
    assert model.config.shortcut_pairs == [(1, 6), (3, 3), (5, 1)] and model.config.adapter_attention_scope == "local"
    assert model.config.adapter_region_bias == 4.0
    summary = json.loads((out2 / "training_summary.json").read_text())
    assert summary["step"] == 100 and summary["recipe"]["learning_rate"] == 3e-3


def test_stage1_builds_the_high_res_fusion_asked_for(tmp_path, tiny_backbones):
    data = write_dataset(tmp_path)
    out = tmp_path / "stack"
    assert run(stage1_args(tiny_backbones, data, out, "--max-steps", 1, "--high-res-fusion", "stack")) == 0
    model = SparseCutForConditionalGeneration.from_pretrained(out)
    width = model.config.vision_config.hidden_size * (1 + model.config.high_res_grid**2)  # Y, then the g x g crop tokens
    assert model.config.high_res_fusion == "stack"
    assert all(adapter.mlp.linear_1.in_features == width for adapter in model.model.adapters.values())
    with pytest.raises(SystemExit):  # argparse names the choices
        run(stage1_args(tiny_backbones, data, tmp_path / "bad", "--high-res-fusion", "sum"))


def test_stage1_builds_reading_tokens_and_trains_them_with_the_adapters(tmp_path, tiny_backbones):
    data = write_dataset(tmp_path)
    out = tmp_path / "reading"
    assert run(stage1_args(tiny_backbones, data, out, "--max-steps", 2, "--reading-tokens", 2, "--reading-layer", 1)) == 0
    model = SparseCutForConditionalGeneration.from_pretrained(out)
    assert model.config.reading_tokens == 2 and model.config.reading_layer == 1
    initial, _ = from_backbones(tiny_backbones["vision"], tiny_backbones["text"], num_shortcuts=3, reading_tokens=2,
                                reading_layer=1)
    before, after = initial.state_dict(), weights(out)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(".reading_adapter." in k for k in changed)  # stage 1 trains the reading adapter with the adapters
    assert all(".adapters." in k or ".reading_adapter." in k for k in changed)
    assert run(stage1_args(tiny_backbones, data, tmp_path / "bad", "--reading-tokens", 2, "--no-high-res")) == 2


def test_unfrozen_vit_and_lora_recipes(tmp_path, tiny_backbones):
    data = write_dataset(tmp_path)
    base = tmp_path / "stage1"
    assert run(stage1_args(tiny_backbones, data, base, "--max-steps", 1)) == 0
    for recipe in ("stage2_unfrozen_vit", "stage2_lora"):
        out = tmp_path / recipe
        assert run(["--recipe", recipe, "--model", base, "--data", data["data"], "--images", data["images"], "--output", out,
                    "--global-batch-size", 4, "--per-device-batch-size", 4, "--max-steps", 2, "--learning-rate", 1e-2,
                    "--lora", '{"r": 4, "alpha": 8, "dropout": 0.0, "modules": "attention"}' if recipe == "stage2_lora" else "none",
                    *FAST]) == 0
        before, after = weights(base), weights(out)
        assert set(before) == set(after)  # LoRA merged into a plain SparseCut checkpoint
        vit_changed = any(not torch.equal(before[k], after[k]) for k in before if ".vision_tower." in k)
        llm_changed = {k.split(".")[-2] for k in before if ".language_model.layers." in k and not torch.equal(before[k], after[k])}
        assert vit_changed == (recipe == "stage2_unfrozen_vit")
        assert llm_changed == ({"q_proj", "k_proj", "v_proj", "o_proj"} if recipe == "stage2_lora" else llm_changed) != set()
    lora = load_file(tmp_path / "stage2_lora" / "lora" / "adapter_model.safetensors")  # the unmerged delta beside it
    for key, value in after.items():  # merged = base + (alpha / r) B A, projection by projection
        if key.endswith("q_proj.weight") and ".language_model.layers." in key:
            stem = next(k for k in lora if key[: -len(".weight")] in k and "lora_A" in k)
            delta = 2.0 * lora[stem.replace("lora_A", "lora_B")] @ lora[stem]
            torch.testing.assert_close(value, before[key] + delta, rtol=1e-5, atol=1e-6)


def test_lora_settings_are_checked_before_training():
    with pytest.raises(ValueError, match="LoRA modules must be all"):
        load_recipe("stage2_lora", {"lora": {"r": 4, "modules": "mlp"}})
    with pytest.raises(ValueError, match="Unknown LoRA settings \\['rank'\\]"):
        load_recipe("stage2_lora", {"lora": {"rank": 4}})


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny_backbones):
    """Every run is a fresh CLI process, as a user runs it (in-process runs would share global state with the tests
    that ran before them)."""
    data = write_dataset(tmp_path)
    common = ["--max-steps", 40, "--epochs", 20, "--save-every", 2, "--gradient-checkpointing", "false"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def command(output, *extra):
        return [sys.executable, "-m", "training", *map(str, stage1_args(tiny_backbones, data, output, *common, *extra))]

    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())
    assert subprocess.run(command(straight), **quiet).returncode == 0
    proc = subprocess.Popen(command(killed), **quiet)
    deadline = time.time() + 600  # generous: a loaded machine can take minutes to import and start
    while time.time() < deadline and len(complete_checkpoints(str(killed))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = [os.path.basename(p) for p in complete_checkpoints(str(killed))]
    assert saved and "step-00000040" not in saved and not (killed / "model.safetensors").exists()  # killed mid-run
    assert subprocess.run(command(killed, "--resume"), **quiet).returncode == 0
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_backbones, monkeypatch):
    data = write_dataset(tmp_path)
    out = tmp_path / "run"
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = []

    def crashing_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        real_save(self, output_dir, **kwargs)
        if len(calls) == 2:  # the second checkpoint: its files are written, the rename never happens
            raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Accelerator, "save_state", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run(stage1_args(tiny_backbones, data, out, "--max-steps", 6, "--epochs", 3, "--save-every", 2))
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    assert (out / "checkpoints" / "step-00000004.tmp").is_dir()
    assert [os.path.basename(p) for p in complete_checkpoints(str(out))] == ["step-00000002"]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000002"
    assert run(stage1_args(tiny_backbones, data, out, "--max-steps", 6, "--epochs", 3, "--save-every", 2, "--resume")) == 0
    assert not (out / "checkpoints" / "step-00000004.tmp").exists()
    assert json.loads((out / "training_summary.json").read_text())["step"] == 6


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_backbones):
    data = write_dataset(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--max-steps", 3, "--epochs", 2, "--learning-rate", 1e-2, "--gradient-checkpointing", "false"]
    assert run(stage1_args(tiny_backbones, data, one, *common, "--per-device-batch-size", 4)) == 0
    args = stage1_args(tiny_backbones, data, two, *common, "--per-device-batch-size", 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "training", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 process(es)" in (two / "plan.txt").read_text()
    a, b = weights(one), weights(two)
    changed = [k for k in a if ".adapters." in k]
    assert changed
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def test_bad_data_is_skipped_with_counts_or_stops_the_run(tmp_path, tiny_backbones, capsys):
    bad = [
        {"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]},
        {"id": "corrupt", "image": "corrupt.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]},
        {"id": "no-placeholder", "image": "0.png", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]},
        {"id": "too-long", "conversations": [{"from": "human", "value": "word " * 400}, {"from": "gpt", "value": "x"}]},
        {"id": "no-reply", "conversations": [{"from": "human", "value": "Hi"}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
    ]
    data = write_dataset(tmp_path, bad)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "run"
    base = ["--recipe", "stage2", "--vision", tiny_backbones["vision"], "--text", tiny_backbones["text"], "--data", data["data"],
            "--images", data["images"], "--output", out, "--global-batch-size", 2, "--per-device-batch-size", 2,
            "--max-length", 600, "--max-steps", 5, *FAST]
    assert run(base + ["--dry-run"]) == 0
    err = capsys.readouterr().err
    for reason in ("missing_image: 1", "corrupt_image", "image_without_placeholder", "too_long", "no_reply"):
        assert reason.split(":")[0] in err
    plan = (out / "plan.txt").read_text()
    assert "9 samples kept, 5 skipped (corrupt_image: 1, image_without_placeholder: 1, missing_image: 1, no_reply: 1, too_long: 1)" in plan
    assert not (out / "model.safetensors").exists()  # dry run trains nothing

    assert run(base) == 0  # without --dry-run the corrupt image passes the quick check and is skipped at load time
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["skipped"] == 1 and "10 samples kept, 4 skipped" in summary["data"]  # the corrupt image, at load time

    assert run(base + ["--strict", "--output", tmp_path / "strict"]) == 2
    assert "sample 'missing'" in capsys.readouterr().err


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path, tiny_backbones, monkeypatch, capsys):
    from training.trainer import Trainer

    data = write_dataset(tmp_path)
    out = tmp_path / "run"
    real = Trainer._micro_loss
    calls = []

    def poisoned(self, batch, global_tokens):
        calls.append(1)
        loss, token_loss = real(self, batch, global_tokens)
        if len(calls) > 6:  # from step 4 on (2 micro-batches per step)
            return loss * float("nan"), token_loss * float("nan")
        return loss, token_loss

    monkeypatch.setattr(Trainer, "_micro_loss", poisoned)
    assert run(stage1_args(tiny_backbones, data, out, "--max-steps", 8, "--epochs", 4, "--save-every", 2)) == 3
    err = capsys.readouterr().err
    assert "NaN/inf at step 4" in err and "step-00000002" in err
    assert [os.path.basename(p) for p in complete_checkpoints(str(out))] == ["step-00000002"]
    assert not (out / "model.safetensors").exists()
