"""python -m sparsecut.evaluation end to end with a tiny random model: outputs, resume, refusals, two processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import make_model, make_processor, one_torch_thread, randomise_gates
from test_evaluation_readers import SHORT, dump_lines, image, mmb_row, write_mmbench, write_pope

from sparsecut.evaluation import generation, tables
from sparsecut.evaluation.answers import evalai_normalise
from sparsecut.evaluation.benchmarks import BENCHMARKS
from sparsecut.evaluation.metrics import pope_metrics
from sparsecut.evaluation.predictions import PredictionsError
from sparsecut.evaluation.runner import RunConfig, run


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_accelerate_state():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    with one_torch_thread():
        yield


def save_eval_model(root) -> str:
    """A tiny random SparseCut model + processor whose greedy answers differ from question to question."""
    model = make_model(seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights ten times HF's init scale: greedy answers differ from question to question
        for weight in (p for p in model.parameters() if p.dim() >= 2):
            weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
    randomise_gates(model)  # every shortcut contributes: answers depend on the image
    model.save_pretrained(root)
    make_processor(model.config).save_pretrained(root)
    return str(root)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_eval_model(tmp_path_factory.mktemp("eval-model"))


def config(model_dir, data_dir, output, **overrides):
    fields = dict(model=model_dir, benchmark="pope", data_dir=str(data_dir), output=str(output), batch_size=4,
                  max_new_tokens=3, cpu=True, progress=False)
    fields.update(overrides)
    return RunConfig(**fields)


def lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_pope_end_to_end_and_resume_after_an_interruption(tmp_path, model_dir, monkeypatch):
    write_pope(tmp_path / "pope")
    reference = run(config(model_dir, tmp_path / "pope", tmp_path / "reference"))
    samples = BENCHMARKS["pope"].read(str(tmp_path / "pope"), "all", {})
    predicted = lines(tmp_path / "reference" / "predictions.jsonl")
    assert [p["id"] for p in predicted] == [s.id for s in samples]
    assert predicted[0]["question"] == "Is there a ran0 in the image?" + SHORT
    texts = [p["prediction"] for p in predicted]
    for setting in ("random", "popular", "adversarial"):
        pairs = [(t, s.target["label"]) for s, t in zip(samples, texts) if s.target["setting"] == setting]
        expected = pope_metrics([t for t, _ in pairs], [label for _, label in pairs])
        assert reference["metrics"][setting]["f1"] == pytest.approx(100 * expected["f1"])
        assert reference["metrics"][setting]["tp"] == expected["tp"]
    table = (tmp_path / "reference" / "results.md").read_text()
    assert "Table 2" in table and "Table 5" in table and "Table 1" not in table
    assert f"| {os.path.basename(model_dir)} |" in table  # the model folder's name
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text())["cells"] == reference["cells"]
    combined = tables.markdown(tables.collect([str(tmp_path / "reference")]), every_table=True)
    name = os.path.basename(model_dir)
    assert f"| {name} | - | - | - | - | - |" in combined  # Table 1: nothing run
    assert f"| {name} | {reference['cells']['pope/random']} | {reference['cells']['pope/popular']} |" in combined

    calls = []
    real = generation.answer

    def interrupted(*args, **kwargs):
        calls.append(len(args[3]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second batch runs
        return real(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(generation, "answer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config(model_dir, tmp_path / "pope", out))
    part = out / "parts" / "part-0000.jsonl"
    assert len(part.read_text().splitlines()) == 4 and not (out / "predictions.jsonl").exists()
    with open(part, "a", encoding="utf-8") as handle:
        handle.write('{"id": "random/')  # a process killed in the middle of a write
    calls.clear()
    monkeypatch.setattr(generation, "answer", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    resumed = run(config(model_dir, tmp_path / "pope", out))
    assert calls == [4, 4]  # only the 8 questions left
    assert lines(out / "predictions.jsonl") == predicted and not (out / "parts").exists()
    assert resumed["metrics"] == reference["metrics"]
    calls.clear()
    assert run(config(model_dir, tmp_path / "pope", out))["metrics"] == reference["metrics"] and calls == []

    limited = tmp_path / "limited"  # a smoke test on 5 questions, then the whole split in the same folder
    assert run(config(model_dir, tmp_path / "pope", limited, limit=5))["questions"] == 5
    assert [p["id"] for p in lines(limited / "predictions.jsonl")] == [s.id for s in samples[:5]]
    calls.clear()
    assert run(config(model_dir, tmp_path / "pope", limited))["metrics"] == reference["metrics"]
    assert calls == [4, 3] and lines(limited / "predictions.jsonl") == predicted


def test_vqav2_test_dev_submission_and_refusals(tmp_path, model_dir):
    data = tmp_path / "vqav2"
    data.mkdir()
    dump_lines(data / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 70 + i, "image": f"COCO_test2015_00000000000{i}.jpg", "text": "What is it?" + SHORT}
        for i in range(3)])
    dump_lines(data / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": q} for q in (69, 70, 71, 72, 99)])
    for i in range(3):
        image(str(data / "test2015" / f"COCO_test2015_00000000000{i}.jpg"), (80 * i, 20, 20), fmt="JPEG")
    out = tmp_path / "out"
    result = run(config(model_dir, data, out, benchmark="vqav2", split="llava-test-dev", batch_size=2))
    assert result["metrics"] == {} and result["cells"] == {}
    answers = {int(p["id"]): evalai_normalise(p["prediction"]) for p in lines(out / "predictions.jsonl")}
    submission = json.loads((out / "vqav2_llava-test-dev_submission.json").read_text())
    assert submission == [{"question_id": q, "answer": answers.get(q, "")} for q in (69, 70, 71, 72, 99)]
    assert "no public answers" in (out / "results.md").read_text()

    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens: 3 -> 5\)"):
        run(config(model_dir, data, out, benchmark="vqav2", split="llava-test-dev", max_new_tokens=5))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    dump_lines(stranger / "predictions.jsonl", [{"id": "popular/1", "prediction": "yes"}])
    with pytest.raises(PredictionsError, match="not in this benchmark split"):
        run(config(model_dir, data, stranger, benchmark="vqav2", split="llava-test-dev"))
    with pytest.raises(ValueError, match="Unknown benchmark 'vqa3'"):
        run(config(model_dir, data, out, benchmark="vqa3"))


def test_mmbench_end_to_end_with_base64_images(tmp_path, model_dir):
    tsv = tmp_path / "mmb"
    tsv.mkdir()
    write_mmbench(tsv / "MMBench_DEV_EN.tsv", [mmb_row(0), mmb_row(1, "A", image_data="0")])
    result = run(config(model_dir, tsv, tmp_path / "out", benchmark="mmbench", split="MMBench_DEV_EN"))
    samples = BENCHMARKS["mmbench"].read(str(tsv), "MMBench_DEV_EN", {})
    predicted = lines(tmp_path / "out" / "predictions.jsonl")
    assert [p["id"] for p in predicted] == [s.id for s in samples] and len(samples) == 6  # 2 questions x 3 rotations
    assert result["metrics"] == BENCHMARKS["mmbench"].score(samples, [p["prediction"] for p in predicted], {})
    assert set(result["cells"]) == {"mmbench/en"} and "MMBench EN" in (tmp_path / "out" / "results.md").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_give_the_predictions_and_metrics_of_one(tmp_path, model_dir):
    from sparsecut.evaluation.synthetic.dataset import write_split

    write_split(str(tmp_path / "data"), "test", seed=5, num_images=2, kind="eval")
    args = ["--model", model_dir, "--benchmark", "synthetic", "--data-dir", str(tmp_path / "data"), "--batch-size", "3",
            "--max-new-tokens", "3", "--cpu", "--no-progress"]
    one = run(config(model_dir, tmp_path / "data", tmp_path / "one", benchmark="synthetic", batch_size=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "sparsecut.evaluation", *args, "--output", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["questions"] > 6  # more than two batches of 3: both processes had work
    assert lines(tmp_path / "one" / "predictions.jsonl") == lines(tmp_path / "two" / "predictions.jsonl")
    assert two["metrics"] == one["metrics"]
    assert len({p["prediction"] for p in lines(tmp_path / "one" / "predictions.jsonl")}) > 1  # answers differ
    assert f"| {os.path.basename(model_dir)} |" in (tmp_path / "one" / "results.md").read_text()


def test_auto_dtype_is_fp32_on_a_cpu_whatever_a_timing_would_say(tmp_path, model_dir, monkeypatch):
    from sparsecut.evaluation import generation
    write_pope(tmp_path / "pope")
    monkeypatch.setattr(generation, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(generation, "cpu_bf16_speedup", lambda model, processor: 10.0)  # a CPU where bf16 would win
    seen = []
    real = generation.answer
    monkeypatch.setattr(generation, "answer", lambda model, *a, **k: seen.append(model.dtype) or real(model, *a, **k))
    run(config(model_dir, tmp_path / "pope", tmp_path / "out", limit=4))
    assert seen == [torch.float32]
