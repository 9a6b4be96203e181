"""int8 on the CPU (``sparsecut.quantization``): which layers are quantized, how close the logits stay, and what
refuses a quantized model."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from conftest import IMAGE_TOKEN_ID, M_V, make_model, make_processor, randomise_gates
from analysis.attributions import integrated_gradients, occlusion, shortcut_attribution
from analysis.inputs import prepare
from sparsecut.quantization import KEPT_FP32, has_int8_layers, quantize_int8


def _model(seed: int = 0):
    model = make_model(seed=seed)
    randomise_gates(model)
    return model.eval()


def _inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 90, (2, M_V + 10), generator=gen)
    input_ids[:, 1:1 + M_V] = IMAGE_TOKEN_ID
    return {"input_ids": input_ids, "pixel_values": torch.randn(2, 5, 3, 16, 16, generator=gen)}


def test_every_llm_linear_but_the_mlp_output_is_int8_and_the_rest_stays_fp32():
    model = quantize_int8(_model())
    names = {name: type(module) for name, module in model.named_modules()}
    llm = [n for n in names if n.startswith("model.language_model.") and names[n] in (nn.Linear, DynamicLinear)]
    assert llm and all((names[n] is nn.Linear) == (n.rsplit(".", 1)[-1] in KEPT_FP32) for n in llm)
    assert any(n.endswith("down_proj") for n in llm) and names["lm_head"] is DynamicLinear
    outside = [n for n, t in names.items() if t in (nn.Linear, DynamicLinear) and not n.startswith("model.language_model.")
               and n != "lm_head"]  # the tower, the adapters
    assert outside and all(names[n] is nn.Linear for n in outside)
    assert has_int8_layers(model) and not has_int8_layers(_model())
    assert model.dtype == torch.float32  # the processor's pixels stay fp32


def test_int8_logits_stay_close_to_fp32():
    reference, quantized = _model(), quantize_int8(_model())
    with torch.no_grad():
        want, got = reference(**_inputs()).logits, quantized(**_inputs()).logits
    error = (got - want).norm() / want.norm()
    assert 0 < error < 0.05, error  # changed (it is quantized), but by a few percent at most
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_only_an_fp32_cpu_model_is_quantized():
    with pytest.raises(ValueError, match="int8 quantizes an fp32 model on the CPU; this one is torch.bfloat16"):
        quantize_int8(_model().to(torch.bfloat16))


def test_gradient_views_refuse_an_int8_model_and_occlusion_still_works():
    model = quantize_int8(_model())
    model.set_attn_implementation("eager")
    processor = make_processor(model.config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8))
    example = prepare(model, processor, image, "What is it?", max_new_tokens=3)
    for view, name in ((integrated_gradients, "integrated gradients"), (shortcut_attribution, "shortcut attribution")):
        with pytest.raises(ValueError, match=f"{name} needs gradients .* Use occlusion"):
            view(model, example, n_steps=2)
    result = occlusion(model, example)
    assert torch.isfinite(result.attributions).all()


def test_load_with_dtype_int8_quantizes_and_the_clis_offer_it(monkeypatch):
    from app.__main__ import parse_args
    from sparsecut import loading
    from sparsecut.evaluation import generation

    monkeypatch.setattr(loading, "load_checkpoint", lambda name, dtype, template=None: (_model().to(dtype), "processor"))
    model, _ = generation.load("any", dtype="int8")
    assert has_int8_layers(model) and not has_int8_layers(generation.load("any", dtype="float32")[0])
    with pytest.raises(ValueError, match="int8 quantizes an fp32 model on the CPU"):
        quantize_int8(generation.load("any", dtype="bfloat16")[0])
    assert parse_args(["--dtype", "int8"]).dtype == "int8"
