"""int8 on the CPU: the LLM's linear layers with int8 weights, for answering faster on CPUs without bf16 kernels.

A short answer on the CPU is bound by reading the LLM's weights once per generated token (a 135M-parameter LLM
is 540 MB in fp32, 135 MB in int8). ``quantize_int8`` swaps the language model's linear layers (the LM head
included) for PyTorch's dynamically quantized linear layer (fbgemm / oneDNN): weights int8 per output channel,
activations quantized per call from their observed range (one scale per tensor), products accumulated in int32.
Kept in fp32: the MLP's output projection (``KEPT_FP32``), whose input has the few huge channels one scale per
tensor cannot hold (LLM.int8()'s outliers; measured on sparsecut-tiny: with every linear layer quantized 14.3% of
300 held-out answers changed, with all but this one 2.5% of 160: README, "Latency"), the vision tower, the adapters
and the embeddings. Inference only: the quantized layers have no gradient, so gradient-based views (integrated
gradients) refuse such a model (``has_int8_layers``).

PyTorch marks this eager-mode API deprecated in favour of torchao, whose CPU int8 path is slower today
(pytorch/ao#4365); the deprecation warning is silenced for this one call, and a torch without the API gets a clear
error naming the dtypes that remain.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


KEPT_FP32 = ("down_proj",)  # linear layers left in fp32, by name: the MLP's output projection (Llama's name)


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` (fp32, on the CPU, eval mode) with its language model's linear layers dynamically quantized to int8,
    in place; returns it. Raises ValueError for a model not on the CPU or not in fp32, RuntimeError when this torch
    no longer has eager dynamic quantization."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise ValueError(f"int8 quantizes an fp32 model on the CPU; this one is {first.dtype} on {first.device}. Use "
                         "--dtype int8 with --device cpu (on a GPU, use bfloat16).")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as err:
        raise RuntimeError(f"This torch ({torch.__version__}) has no eager dynamic quantization "
                           "(torch.ao.quantization.quantize_dynamic); use --dtype float32 or bfloat16.") from err
    llm = {id(m) for m in model.model.language_model.modules() if isinstance(m, nn.Linear)}
    llm.add(id(model.get_output_embeddings()))
    targets = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
               if id(module) in llm and name.rsplit(".", 1)[-1] not in KEPT_FP32}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)
    return model


def has_int8_layers(model: nn.Module) -> bool:
    """True when ``model`` has dynamically quantized (gradient-free) layers, i.e. went through ``quantize_int8``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(module, DynamicLinear) for module in model.modules())
