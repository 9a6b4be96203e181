"""Speed levers of training and inference on the CPU: bf16 autocast, the LM head only at labelled positions, and
the measured dtype choice of ``load(dtype="auto")``."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGE_TOKEN_ID, M_V, make_model

from sparsecut import precision
from training.data import IGNORE_INDEX, supervised_positions


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    _reset_accelerate()
    yield


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 90, (3, M_V + 12), generator=gen)
    input_ids[:, 1 : 1 + M_V] = IMAGE_TOKEN_ID
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, -4:] = input_ids[0, -4:]  # rows supervise different spans; row 2 none at all
    labels[1, -7:-2] = input_ids[1, -7:-2]
    pixel_values = torch.randn(3, 5, 3, 16, 16, generator=gen)
    return input_ids, labels, pixel_values


def test_supervised_positions_pair_each_kept_logit_with_its_next_token():
    _, labels, _ = _batch()
    keep, targets = supervised_positions(labels)
    assert keep.shape == labels.shape and int(keep.sum()) == targets.numel() == 9
    rows, cols = keep.nonzero(as_tuple=True)
    assert torch.equal(targets, labels[rows, cols + 1])
    assert not keep[:, -1].any() and not keep[2].any()


def test_logits_at_labelled_positions_give_the_full_loss():
    model = make_model()
    input_ids, labels, pixel_values = _batch()
    full = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    keep, targets = supervised_positions(labels)
    kept = model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=keep).logits
    assert kept.shape == (targets.numel(), model.config.text_config.vocab_size)
    assert torch.allclose(kept, full.logits[keep], atol=1e-6)
    assert torch.allclose(F.cross_entropy(kept, targets), full.loss, atol=1e-6)
    with pytest.raises(ValueError, match="flattened logits"):
        model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=keep, labels=labels)


def _first_loss(tmp_path, tiny_backbones, name: str, precision_flag: str) -> float:
    from test_training import run, stage1_args, write_dataset

    _reset_accelerate()  # a process has one accelerate state; each run here sets its own precision
    data = write_dataset(tmp_path / name)
    out = tmp_path / name / "out"
    args = stage1_args(tiny_backbones, data, out, "--max-steps", 1, "--save-every", 1000)
    args[args.index("--mixed-precision") + 1] = precision_flag
    assert run(args) == 0
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_a_bf16_cpu_training_step_has_the_fp32_loss_within_one_percent(tmp_path, tiny_backbones):
    fp32 = _first_loss(tmp_path, tiny_backbones, "fp32", "no")
    bf16 = _first_loss(tmp_path, tiny_backbones, "bf16", "bf16")
    assert fp32 > 0 and abs(bf16 - fp32) <= 0.01 * fp32, (fp32, bf16)


def test_auto_dtype_on_a_cpu_follows_the_measurement(monkeypatch):
    from sparsecut.evaluation import generation

    monkeypatch.setattr(generation, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(generation, "cpu_bf16_speedup", lambda model, processor: 2.0)
    assert generation.load("sparsecut-tiny", dtype="auto")[0].dtype == torch.bfloat16
    monkeypatch.setattr(generation, "cpu_bf16_speedup", lambda model, processor: 1.05)  # within the noise margin
    assert generation.load("sparsecut-tiny", dtype="auto")[0].dtype == torch.float32
    monkeypatch.setattr(generation, "cpu_bf16_speedup", lambda model, processor: pytest.fail("float32 asked: no probe"))
    assert generation.load("sparsecut-tiny", dtype="float32")[0].dtype == torch.float32
    monkeypatch.setattr(generation, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(generation, "cpu_bf16_speedup", lambda model, processor: pytest.fail("no bf16 here: no probe"))
    assert generation.load("sparsecut-tiny", dtype="auto")[0].dtype == torch.float32


@pytest.mark.parametrize("copy_up_to", [10**9, 0])  # a bf16 copy timed (small models), or autocast (large ones)
def test_the_cpu_probe_times_both_ways_and_leaves_the_model_as_it_was(monkeypatch, copy_up_to):
    from conftest import make_processor

    from sparsecut.evaluation import generation

    monkeypatch.setattr(generation, "BF16_COPY_MAX_PARAMETERS", copy_up_to)
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speedup = generation.cpu_bf16_speedup(model, make_processor(model.config))
    assert speedup > 0 and model.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    step = precision.autocast_step_speedup(model, {"input_ids": _batch()[0], "pixel_values": _batch()[2]})
    assert step > 0 and all(p.grad is None for p in model.parameters())
