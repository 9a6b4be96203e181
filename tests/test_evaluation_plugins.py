"""The lmms-eval and VLMEvalKit plugins, driven as the harnesses drive them, without the harnesses installed."""

import importlib
import importlib.util
import json
import math
import sys

import pytest
import torch
from PIL import Image
from sparsecut.cache_name import CACHE_KWARG
from conftest import one_torch_thread
from test_evaluation_runner import save_eval_model

from sparsecut.evaluation import generation


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_eval_model(tmp_path_factory.mktemp("plugin-model"))


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (20, 16), (60 * i, 200 - 50 * i, 90)) for i in range(3)]


class Request:
    """The part of lmms-eval's ``Instance`` a model reads: the payload in ``args``."""

    def __init__(self, *args):
        self.args = args


def lmms_model(model_dir, **kwargs):
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    plugin = importlib.import_module("sparsecut.evaluation.lmms_plugin.models")  # what LMMS_EVAL_PLUGINS imports
    name = "sparsecut"
    cls = getattr(importlib.import_module(f"sparsecut.evaluation.lmms_plugin.models.{name}"), plugin.AVAILABLE_MODELS[name])
    if importlib.util.find_spec("lmms_eval") is None:
        assert cls.__mro__[1] is object  # importable without lmms-eval
    return cls(pretrained=model_dir, device="cpu", **kwargs)


def test_lmms_eval_generate_until_batches_and_cuts_at_until(model_dir, images):
    lm = lmms_model(model_dir, batch_size=2, max_new_tokens=3)
    lm.task_dict = {"toy": {"test": [{"image": im} for im in images]}}
    to_visual = lambda doc: [doc["image"]]  # noqa: E731
    questions = [f"What is shape {i}?" for i in range(3)]
    expected = generation.answer(lm.model, lm.processor, [[im] for im in images], questions, 3)
    assert len(set(expected)) > 1
    requests = [Request(q, {"max_new_tokens": 3, "until": ["\n\n"]}, to_visual, i, "toy", "test") for i, q in enumerate(questions)]
    assert lm.generate_until(requests) == expected
    stop = expected[1][-1]
    cut = Request(questions[1], {"max_new_tokens": 3, "until": [stop], "temperature": 0}, to_visual, 1, "toy", "test")
    assert lm.generate_until([requests[0], cut]) == [expected[0], expected[1].split(stop)[0]]
    assert (lm.rank, lm.world_size) == (0, 1)


def test_lmms_eval_loglikelihood_matches_incremental_decoding(model_dir, images):
    lm = lmms_model(model_dir)
    lm.task_dict = {"toy": {"test": [{"image": images[0], "answer": "red"}]}}
    request = Request("What colour?", lambda doc: doc["answer"], lambda doc: [doc["image"]], 0, "toy", "test")
    ((logprob, greedy),) = lm.loglikelihood([request])
    processor, model = lm.processor, lm.model
    prompt = generation.prompt(processor, "What colour?", [images[0]])
    full = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour?"},
                                          {"role": "assistant", "content": "red"}], add_generation_prompt=False)
    assert full.startswith(prompt) and full[len(prompt):] == " red</s>"  # vicuna_v1's reply and end of turn
    targets = processor.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # prefill with the image, then the reply one token at a time through the KV cache
        out = model(**processor(images=[images[0]], text=[prompt]), use_cache=True)
        total, all_argmax = 0.0, True
        for token in targets:
            logits = out.logits[0, -1]
            total += float(torch.log_softmax(logits, -1)[token])
            all_argmax &= int(logits.argmax()) == token
            out = model(input_ids=torch.tensor([[token]]), cache=out[CACHE_KWARG], use_cache=True)
    assert logprob == pytest.approx(total, abs=1e-4) and -math.inf < logprob < 0
    assert greedy == all_argmax
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([request])


def test_vlmevalkit_generate_inner_and_llava_multiple_choice_prompt(model_dir, images, tmp_path):
    from sparsecut.evaluation.vlmevalkit import SparseCutVLM

    if importlib.util.find_spec("vlmeval") is None:
        assert SparseCutVLM.__mro__[1] is object  # importable without VLMEvalKit
    vlm = SparseCutVLM(model_path=model_dir, max_new_tokens=3)
    paths = []
    for i, im in enumerate(images[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    one = [{"type": "image", "value": paths[0]}, {"type": "text", "value": "What is it?"}]
    assert vlm.generate_inner(one) == generation.answer(vlm.model, vlm.processor, [paths[0]], ["What is it?"], 3)[0]
    two = [{"type": "image", "value": paths[0]}, {"type": "image", "value": paths[1]}, {"type": "text", "value": "Same?"}]
    assert vlm.generate_inner(two) == generation.answer(vlm.model, vlm.processor, [paths], ["Same?"], 3)[0]

    vlm.dump_image = lambda line, dataset: [paths[0]]  # VLMEvalKit's base class writes the row's image to disk
    line = {"index": 0, "question": "Which animal?", "hint": float("nan"), "A": "cat", "B": "dog", "C": float("nan")}
    assert vlm.build_prompt(line, "MMBench_DEV_EN") == [
        {"type": "image", "value": paths[0]},
        {"type": "text", "value": "Which animal?\nA. cat\nB. dog\nAnswer with the option's letter from the given "
                                  "choices directly."}]
    chinese = dict(line, question="哪种动物？", hint="看图")
    assert vlm.build_prompt(chinese, "MMBench_DEV_CN")[1]["value"] == "看图\n哪种动物？\nA. cat\nB. dog\n请直接回答选项字母。"


def test_vlmevalkit_launcher_registers_the_model_and_runs_run_py(model_dir, tmp_path, monkeypatch):
    from sparsecut.evaluation import vlmevalkit

    fake = tmp_path / "fake"
    (fake / "vlmeval").mkdir(parents=True)
    (fake / "vlmeval" / "__init__.py").write_text("")
    (fake / "vlmeval" / "config.py").write_text("supported_VLM = {}\n")
    run_py = fake / "run.py"  # stands in for VLMEvalKit's run.py: records what it was given
    run_py.write_text(
        "import json, sys\nfrom vlmeval.config import supported_VLM\n"
        f"json.dump({{'argv': sys.argv[1:], 'models': {{k: v.keywords for k, v in supported_VLM.items()}}}}, "
        f"open({str(tmp_path / 'seen.json')!r}, 'w'))\n")
    monkeypatch.syspath_prepend(str(fake))
    try:
        assert vlmevalkit.main(["--model-path", model_dir, "--run", str(run_py), "--max-new-tokens", "7", "--",
                                "--data", "MMBench_DEV_EN", "--model", "sparsecut"]) == 0
    finally:
        for module in [m for m in sys.modules if m == "vlmeval" or m.startswith("vlmeval.")]:
            del sys.modules[module]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["--data", "MMBench_DEV_EN", "--model", "sparsecut"]
    assert seen["models"] == {"sparsecut": {"model_path": model_dir, "max_new_tokens": 7, "dtype": "auto"}}
