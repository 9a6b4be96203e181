"""SparseCut: a vision tower, one adapter per shortcut, and any HF causal LM (paper §3, eq. 1-4).

Composition follows transformers' LLaVA: ``SparseCutModel`` holds ``vision_tower``, ``adapters`` and
``language_model`` (the decoder without its head); ``SparseCutForConditionalGeneration`` adds ``lm_head``,
the loss and ``generate``.

Injection (eq. 4) lives in ``injection.py``: visual positions of the input embeddings start at 0; a shortcut
``(i, j)`` adds its adapter output Z_i to the visual positions of the hidden state entering LLM layer ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from . import injection
from .adapter import AdapterAttention, OutputRMSNorm, ShortcutAdapter, ZeroInitLinear
from .cache_name import CACHE_KWARG, one_cache
from .config import SparseCutConfig
from .patterns import Shortcut, parse_pattern_string
from .reading import ReadingAdapter
from .vision import vision_hidden_states

def adapter_key(shortcut: Shortcut) -> str:
    """Name of a shortcut's adapter in ``model.adapters`` (and in the state dict)."""
    return f"vit{shortcut[0]}_llm{shortcut[1]}"


def decoder_layers_of(language_model: nn.Module) -> nn.ModuleList:
    """The decoder layers of an HF base model (``LlamaModel``, ``Qwen2Model``, ``MistralModel``, ...)."""
    layers = getattr(language_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"Unsupported language model {type(language_model).__name__}: SparseCut needs its decoder layers in a "
            "`layers` ModuleList (as Llama, Qwen2, Mistral have)."
        )
    return layers


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the requested config."""

    def __init__(self, path, config: SparseCutConfig, problems: dict[str, list[str]]):
        lines = [f"The checkpoint at {path} does not match the requested SparseCut config."]
        saved = _saved_config(path)
        if saved is not None:
            for field, (was, now) in _config_differences(saved, config).items():
                lines.append(f"  config.{field}: checkpoint has {was}, requested {now}")
        for kind, keys in problems.items():
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                lines.append(f"  {kind} weights: {shown}")
        lines.append("Load it with the config saved beside it (omit config=...), or pass strict=False to initialise the rest.")
        super().__init__("\n".join(lines))


def _saved_config(path) -> SparseCutConfig | None:
    try:
        return SparseCutConfig.from_pretrained(path)
    except Exception:  # a hub id that cannot be reached, or a folder with no config: report the weights only
        return None


_COMPARED_FIELDS = (
    "shortcuts", "high_res", "high_res_grid", "high_res_fusion", "adapter_attention", "adapter_num_heads",
    "adapter_kv_source", "adapter_attention_scope", "adapter_region_bias", "adapter_mlp", "adapter_bias", "zero_init_extra_shortcuts", "image_seq_length",
)
_COMPARED_TOWER_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def _config_differences(saved: SparseCutConfig, wanted: SparseCutConfig) -> dict[str, tuple]:
    diffs = {f: (getattr(saved, f), getattr(wanted, f)) for f in _COMPARED_FIELDS if getattr(saved, f) != getattr(wanted, f)}
    for tower in ("vision_config", "text_config"):
        a, b = getattr(saved, tower), getattr(wanted, tower)
        for f in _COMPARED_TOWER_FIELDS:
            if getattr(a, f, None) != getattr(b, f, None):
                diffs[f"{tower}.{f}"] = (getattr(a, f, None), getattr(b, f, None))
    return diffs


@dataclass
class SparseCutModelOutputWithPast(BaseModelOutputWithPast):
    """Adds ``adapter_attentions``: {adapter key: (num_images, H, M_v, K)} when asked for."""

    adapter_attentions: dict | None = None


@dataclass
class SparseCutCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Adds ``adapter_attentions`` as above; the cache field is named as in the installed transformers."""

    adapter_attentions: dict | None = None


class SparseCutPreTrainedModel(PreTrainedModel):
    config: SparseCutConfig
    config_class = SparseCutConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_KWARG]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained`` that also takes shipped names (``sparsecut.zoo``) and refuses a
        checkpoint which does not fit the config.

        Transformers would warn and randomly initialise missing weights; here missing, unexpected or differently
        shaped weights raise ``CheckpointMismatchError`` naming them and the config fields that differ.
        ``strict=False`` restores the transformers behaviour."""
        from . import zoo

        if zoo.is_known(pretrained_model_name_or_path):  # a shipped name such as "sparsecut-tiny"
            pretrained_model_name_or_path = zoo.resolve(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        if strict:  # collect size mismatches in the loading info, then refuse them below with our message
            kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if strict:
            problems = {
                "missing": sorted(info.get("missing_keys", [])),
                "unexpected": sorted(info.get("unexpected_keys", [])),
                "mismatched": sorted(str(k) for k in info.get("mismatched_keys", [])),
            }
            if any(problems.values()):
                raise CheckpointMismatchError(pretrained_model_name_or_path, model.config, problems)
        return (model, info) if want_info else model

    def _init_weights(self, module):
        if isinstance(module, ZeroInitLinear):  # adapter attention output: the adapter starts as LLaVA's projector
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ShortcutAdapter) and module.gate is not None:
            init.zeros_(module.gate)  # extra shortcuts start switched off
        elif isinstance(module, AdapterAttention) and module.region_bias is not None:
            module.reset_region_bias()  # each head starts on one place of the region
        elif isinstance(module, OutputRMSNorm):
            init.constant_(module.weight, module.start)  # visual tokens start at the scale asked for
        elif isinstance(module, ReadingAdapter):
            init.normal_(module.queries, std=getattr(self.config.vision_config, "initializer_range", 0.02))
        else:
            super()._init_weights(module)


class SparseCutModel(SparseCutPreTrainedModel):
    """Vision tower + per-shortcut adapters + decoder; returns the last hidden state (no LM head)."""

    def __init__(self, config: SparseCutConfig, vision_tower: nn.Module | None = None, language_model: nn.Module | None = None):
        """``vision_tower`` / ``language_model`` (a base decoder such as ``LlamaModel``) may be passed already loaded
        (``sparsecut.convert.from_backbones``); loaded weights are left as they are, the rest is initialised."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.adapters = nn.ModuleDict(
            {
                adapter_key(s): ShortcutAdapter(config, gated=config.zero_init_extra_shortcuts and s != config.primary_shortcut)
                for s in config.shortcut_pairs
            }
        )
        self.reading_adapter = ReadingAdapter(config) if config.reading_tokens else None
        self.language_model = language_model if language_model is not None else AutoModel.from_config(config.text_config)
        injection.install(decoder_layers_of(self.language_model))
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def resolve_shortcuts(self, shortcuts=None) -> list[Shortcut]:
        """The shortcuts to use for one call: all of the model's, or a subset given as pairs or ``"i:j,..."``.

        A subset is an inference-time ablation: only shortcuts the model was built with can be used."""
        available = self.config.shortcut_pairs
        if shortcuts is None:
            return available
        pairs = parse_pattern_string(shortcuts) if isinstance(shortcuts, str) else [tuple(int(x) for x in p) for p in shortcuts]
        unknown = [p for p in pairs if p not in available]
        if unknown:
            raise ValueError(
                f"Shortcut(s) {unknown} are not in this model; it has {available}. A subset of them can be switched on "
                "at inference; other patterns need a model trained with them."
            )
        return sorted(set(pairs))

    def resolve_high_res(self, high_res: bool | None = None, num_views: int | None = None) -> bool:
        """Whether one call uses the high-res views: ``high_res`` if given (True refused for a model built without
        them), else the model's own setting when the call has more than one view per image (``num_views``, default
        the model's)."""
        num_views = self.config.num_views if num_views is None else num_views
        if high_res is None:
            return self.config.high_res and num_views > 1
        if high_res and not self.config.high_res:
            raise ValueError("high_res=True, but this model was built without high-res views (config.high_res=False).")
        return high_res

    def get_shortcut_features(
        self,
        pixel_values: torch.Tensor,
        shortcuts=None,
        high_res: bool | None = None,
        output_attentions: bool = False,
    ) -> tuple[dict[Shortcut, torch.Tensor], dict[str, torch.Tensor] | None]:
        """pixel_values (I, N, 3, H, W), or (I, 3, H, W) for the low-res view alone ->
        {shortcut: Z (I, T_img, D_t)}, T_img = M_v (or N * M_v in concat mode), and adapter attentions if asked."""
        features, _, attentions = self.get_visual_features(pixel_values, shortcuts, high_res, output_attentions)
        return features, attentions

    def get_visual_features(
        self,
        pixel_values: torch.Tensor,
        shortcuts=None,
        high_res: bool | None = None,
        output_attentions: bool = False,
    ) -> tuple[dict[Shortcut, torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """``get_shortcut_features``'s features and attentions, with the reading tokens (I, K, D_t) between them
        (None without high-res views or ``config.reading_tokens``): one pass of the tower for both."""
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]  # (I, 1, 3, H, W)
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (images, views, 3, H, W) or (images, 3, H, W); got {tuple(pixel_values.shape)}.")
        num_images, num_views = pixel_values.shape[:2]
        use_high = self.resolve_high_res(high_res, num_views)
        if use_high and num_views != self.config.num_views:
            raise ValueError(
                f"High-res needs {self.config.num_views} views per image (1 low-res + {self.config.high_res_grid}x"
                f"{self.config.high_res_grid} crops); got {num_views}. Use SparseCutProcessor with the model's grid."
            )
        if not use_high:
            pixel_values = pixel_values[:, :1]  # the low-res view only
        active = self.resolve_shortcuts(shortcuts)
        attentions = {} if output_attentions else None
        reading = self.reading_adapter is not None and use_high
        if not active and not reading:
            return {}, None, attentions
        views = pixel_values.shape[1]
        drop_cls = self.config.vision_feature_select_strategy == "default"
        own_tower = reading and self.config.reading_tower  # the reading queries look through a tower of their own
        layers = {i for i, _ in active} | ({self.config.reading_layer} if reading and not own_tower else set())
        hidden = {}
        if layers:  # (I * N, 3, H, W): every view in one pass
            hidden = vision_hidden_states(self.vision_tower, pixel_values.flatten(0, 1), layers, drop_cls)
        read = None
        if reading:
            if own_tower:  # the crops only
                crops = self.reading_tower_tokens(pixel_values[:, 1:])  # (I, g*g * M, Dv)
            else:
                crops = hidden[self.config.reading_layer].unflatten(0, (num_images, views))[:, 1:].flatten(1, 2)
            read = self.reading_adapter(crops)  # (I, K, Dt)
        concat = use_high and self.config.high_res_fusion == "concat"
        features: dict[Shortcut, torch.Tensor] = {}
        for shortcut in active:
            adapter = self.adapters[adapter_key(shortcut)]
            tokens = hidden[shortcut[0]]  # (I * N, M, Dv)
            if concat:  # Fig. 3a: every view adapted on its own, all views' tokens go to the context
                z, attn = adapter(tokens, None, output_attentions)
                z = z.reshape(num_images, views * z.shape[1], z.shape[2])  # (I, N * M, Dt)
            else:
                tokens = tokens.reshape(num_images, views, *tokens.shape[1:])  # (I, N, M, Dv)
                high = tokens[:, 1:].flatten(1, 2) if views > 1 else None  # (I, g*g * M, Dv)
                z, attn = adapter(tokens[:, 0], high, output_attentions)
            features[shortcut] = z
            if output_attentions and attn is not None:
                attentions[adapter_key(shortcut)] = attn
        return features, read, attentions

    def reading_tower_tokens(self, crops: torch.Tensor) -> torch.Tensor:
        """crops (I, g*g, 3, H, W) -> the reading tower's tokens of each image's crops at ``config.reading_layer``
        (I, g*g * M, D_v): what the reading adapter reads with ``config.reading_tower``."""
        drop_cls = self.config.vision_feature_select_strategy == "default"
        layer = self.config.reading_layer
        hidden = vision_hidden_states(self.reading_adapter.vision_tower, crops.flatten(0, 1), [layer], drop_cls)[layer]
        return hidden.unflatten(0, crops.shape[:2]).flatten(1, 2)

    def get_placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T) bool mask of the image placeholder positions."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            return (inputs_embeds == image_embed).all(-1)
        return input_ids == self.config.image_token_id

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        shortcuts=None,
        high_res: bool | None = None,
        output_adapter_attentions: bool = False,
        **kwargs,
    ) -> SparseCutModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cache = one_cache(cache, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, Dt)
        adapter_attentions = None
        if pixel_values is not None:
            mask = self.get_placeholder_mask(input_ids, inputs_embeds)  # (B, T)
            features, reading, adapter_attentions = self.get_visual_features(
                pixel_values, shortcuts, high_res, output_adapter_attentions
            )
            num_images = pixel_values.shape[0]
            tokens_per_image = self._tokens_per_image(pixel_values, high_res)
            if int(mask.sum()) != num_images * tokens_per_image:
                raise ValueError(
                    f"Image features and image tokens do not match: the text has {int(mask.sum())} image placeholder "
                    f"tokens (id {self.config.image_token_id}) but {num_images} image(s) x {tokens_per_image} tokens "
                    "were given. Build inputs with SparseCutProcessor using the same high-res setting."
                )
            positions = mask.nonzero(as_tuple=True)
            inputs_embeds = inputs_embeds.masked_fill(mask[..., None], 0.0)  # visual positions start at 0
            if reading is not None:  # each image's last K placeholders take its reading tokens; the shortcuts the rest
                fused = tokens_per_image - reading.shape[1]
                split = [p.view(num_images, tokens_per_image) for p in positions]
                inputs_embeds = injection.add_at(inputs_embeds, tuple(p[:, fused:].flatten() for p in split),
                                                 reading.flatten(0, 1))
                positions = tuple(p[:, :fused].flatten() for p in split)
            inputs_embeds, deeper = injection.inject(inputs_embeds, positions, injection.plan(features))
            if deeper is not None:
                kwargs[injection.INJECTION_KWARG] = deeper
        elif input_ids is not None and cache is None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError("input_ids contain image placeholder tokens but no pixel_values were given.")

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{CACHE_KWARG: cache},
            **kwargs,
        )
        injection.check_delivered(kwargs.get(injection.INJECTION_KWARG), self.language_model)
        return SparseCutModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_KWARG: outputs.get(CACHE_KWARG)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            adapter_attentions=adapter_attentions,
        )

    def _tokens_per_image(self, pixel_values: torch.Tensor, high_res: bool | None) -> int:
        num_views = pixel_values.shape[1] if pixel_values.dim() == 5 else 1
        return self.config.tokens_per_image(self.resolve_high_res(high_res, num_views))


class SparseCutForConditionalGeneration(SparseCutPreTrainedModel, GenerationMixin):
    """SparseCut with an LM head: ``forward`` (logits, loss) and ``generate`` (KV cache; injection in prefill only).

    Per-call options (safe to mix across threads): ``shortcuts`` (a subset of the model's, as an ablation),
    ``high_res`` (False to use the low-res view only).
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(
        self,
        config: SparseCutConfig,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
        lm_head: nn.Linear | None = None,
    ):
        super().__init__(config)
        self.model = SparseCutModel(config, vision_tower, language_model)
        self.lm_head = lm_head if lm_head is not None else nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shortcuts=None,
        high_res: bool | None = None,
        output_adapter_attentions: bool = False,
        **kwargs,
    ) -> SparseCutCausalLMOutputWithPast:
        """input_ids (B, T) with M_v image placeholders per image; pixel_values (I, N, 3, H, W) or (I, 3, H, W);
        labels (B, T) with -100 where not supervised. Returns logits (B, T, V) and the shifted LM loss.
        ``logits_to_keep``: an int or 1-D index tensor as in transformers, or a (B, T) bool mask: logits only at those
        positions, (N, V) in row-major order (training: the head only where a next token is supervised)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            shortcuts=shortcuts,
            high_res=high_res,
            output_adapter_attentions=output_adapter_attentions,
            **kwargs,
        )
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            if labels is not None:
                raise ValueError("logits_to_keep as a (B, T) mask gives flattened logits; compute the loss from them "
                                 "instead of passing labels.")
            hidden_states = outputs.last_hidden_state[logits_to_keep]  # (N, D): only the kept positions, row-major
        else:
            hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return SparseCutCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_KWARG: outputs.get(CACHE_KWARG)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            adapter_attentions=outputs.adapter_attentions,
        )
