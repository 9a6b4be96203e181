"""Probes: read-only context managers that record tensors during a forward pass.

    with AdapterOutputs(model) as z, LayerInputs(model) as h:
        model(**inputs)
    z.outputs[(23, 1)], h.inputs[1]

A probe's hooks sit on the model only inside its ``with`` block and are removed on exit, also when an error is
raised. They record only calls made in the context that opened the probe (same thread or asyncio task, through a
``ContextVar``): a request running at the same time in another thread on the same model is neither recorded nor
touched. Hooks return nothing, so the model computes exactly what it computes without them. Each probe keeps the
values of the last forward pass inside its block.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import nn

from sparsecut import SparseCutForConditionalGeneration, SparseCutModel
from sparsecut.model import adapter_key, decoder_layers_of

_ACTIVE: ContextVar[frozenset] = ContextVar("sparsecut_analysis_hooks", default=frozenset())


def base_model(model) -> SparseCutModel:
    """The ``SparseCutModel`` inside a ``SparseCutForConditionalGeneration`` (or the model itself)."""
    if isinstance(model, SparseCutForConditionalGeneration):
        return model.model
    if isinstance(model, SparseCutModel):
        return model
    raise TypeError(f"Expected a SparseCut model; got {type(model).__name__}.")


class ContextHooks:
    """Hooks on a shared model that act only for calls made in the context that entered this object.

    Subclasses register their hooks in ``_attach`` through ``_forward_hook`` / ``_forward_pre_hook``."""

    def __init__(self):
        self._handles: list = []
        self._token = None

    def _attach(self) -> None:
        raise NotImplementedError

    def _active(self) -> bool:
        return self in _ACTIVE.get()

    def _forward_hook(self, module: nn.Module, fn) -> None:
        """fn(module, args, output) -> None, or a replacement output."""
        self._handles.append(module.register_forward_hook(lambda m, a, o: fn(m, a, o) if self._active() else None))

    def _forward_pre_hook(self, module: nn.Module, fn) -> None:
        """fn(module, args, kwargs) -> None, or replacement ``(args, kwargs)``.

        ``k`` has a default because torch registers a with-kwargs hook in two steps: a forward running meanwhile in
        another thread may call it without kwargs. Such a call is never this context's, so it does nothing."""
        self._handles.append(
            module.register_forward_pre_hook(lambda m, a, k=None: fn(m, a, k) if self._active() else None, with_kwargs=True)
        )

    def __enter__(self):
        if self._token is not None:
            raise RuntimeError(f"{type(self).__name__} is already open; make a new one for a nested block.")
        self._token = _ACTIVE.set(_ACTIVE.get() | {self})
        try:
            self._attach()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _ACTIVE.reset(self._token)
        self._token = None
        return False


class AdapterOutputs(ContextHooks):
    """Each shortcut's adapter output Z_i as the adapter returns it: ``outputs[(i, j)]`` (I, M_v, D_t), or
    (I * N, M_v, D_t) in concat mode (every view adapted on its own). Shortcuts switched off record nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = base_model(model)
        self.outputs: dict = {}

    def _attach(self) -> None:
        for shortcut in self.model.config.shortcut_pairs:
            self._forward_hook(self.model.adapters[adapter_key(shortcut)], self._recorder(shortcut))

    def _recorder(self, shortcut):
        def record(module, args, output):
            self.outputs[shortcut] = output[0].detach()

        return record


class LayerInputs(ContextHooks):
    """The hidden state entering LLM decoder layer j (1-based, the paper's numbering), after the shortcuts into j
    have been added: ``inputs[j]`` (B, T, D_t). ``layers``: which j to record (default: all)."""

    def __init__(self, model, layers=None):
        super().__init__()
        self.model = base_model(model)
        count = len(decoder_layers_of(self.model.language_model))
        self.layers = sorted(set(range(1, count + 1) if layers is None else layers))
        bad = [j for j in self.layers if not 1 <= j <= count]
        if bad:
            raise ValueError(f"LLM layer(s) {bad} out of range; the language model has layers 1..{count}.")
        self.inputs: dict[int, torch.Tensor] = {}

    def _attach(self) -> None:
        layers = decoder_layers_of(self.model.language_model)
        for j in self.layers:  # registered after the model's injection pre-hooks, so they see the added shortcuts
            self._forward_pre_hook(layers[j - 1], self._recorder(j))

    def _recorder(self, j: int):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[j] = hidden.detach()

        return record


def attention_unavailable_reason(model) -> str | None:
    """Why the LLM's attention weights cannot be read (its attention implementation is not eager), or None."""
    implementation = base_model(model).language_model.config._attn_implementation
    if implementation == "eager":
        return None
    return (
        f"LLM attention maps need eager attention, but the language model uses {implementation!r}, which does not return "
        "attention weights. Load the model with from_pretrained(..., attn_implementation='eager'), or call "
        "model.set_attn_implementation('eager') once before serving requests (not per call: it changes the shared model)."
    )


class AttentionRows(ContextHooks):
    """Self-attention weights of every LLM decoder layer for chosen query rows: ``weights[j]`` (B, H, R, T),
    j 1-based; each row sums to 1 over the T keys. Needs the language model loaded with
    ``attn_implementation="eager"`` (SDPA and flash kernels never form the weights)."""

    def __init__(self, model, rows: torch.Tensor):
        super().__init__()
        self.model = base_model(model)
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.weights: dict[int, torch.Tensor] = {}

    def _attach(self) -> None:
        reason = attention_unavailable_reason(self.model)
        if reason:
            raise ValueError(reason)
        for j, layer in enumerate(decoder_layers_of(self.model.language_model), start=1):
            attention = getattr(layer, "self_attn", None)
            if attention is None:
                raise TypeError(
                    f"Decoder layer {j} ({type(layer).__name__}) has no `self_attn` module to read weights from."
                )
            self._forward_hook(attention, self._recorder(j))

    def _recorder(self, j: int):
        def record(module, args, output):
            weights = output[1]  # (B, H, T_q, T)
            self.weights[j] = weights[:, :, self.rows.to(weights.device)].detach()

        return record
