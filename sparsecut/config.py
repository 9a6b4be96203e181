"""SparseCutConfig: a transformers config composed of a vision config and a text config (as LlavaConfig)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .patterns import Shortcut, make_pattern, validate_shortcuts

VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model")
MLP_TYPES = ("mlp2x_gelu", "linear")
KV_SOURCES = ("high", "low+high")
ATTENTION_SCOPES = ("global", "local")
HIGH_RES_FUSIONS = ("cross-attention", "concat", "stack")
FEATURE_STRATEGIES = ("default", "full")


class SparseCutConfig(PretrainedConfig):
    r"""Configuration of a SparseCut model.

    Layer numbers are the paper's (see ``sparsecut.patterns``). The three modes of the paper:

    - ``llava``: pattern ``[(L_v - 1, 1)]``, no high-res, adapter without attention = LLaVA-1.5 exactly;
    - ``sparsecut``: any pattern, high-res views fused into M_v tokens by each adapter's cross-attention;
    - ``concat``: high-res views' tokens appended to the context ((1 + g^2) * M_v visual tokens, Fig. 3a);
    - ``sparsecut`` with ``high_res_fusion="stack"`` (not the paper's): each low-res token also carries, along its
      channels, the g x g high-res tokens of its image region, so Y is (M_v, (1 + g^2) * D_v) and the context still
      holds M_v tokens;
    - ``sparsecut`` with ``reading_tokens`` K > 0 (not the paper's): K more visual tokens per image, each read from
      the crops by a learned query of its own (``sparsecut.reading``), after the M_v fused ones: a text's characters
      get positions of their own, at K tokens of context rather than concat's g^2 * M_v.

    Args:
        vision_config: a CLIP or SigLIP vision config (dict or config object).
        text_config: any HF causal-LM config whose decoder layers sit in ``model.layers``.
        shortcuts: list of ``(vit_layer, llm_layer)`` pairs; built from ``pattern`` when omitted.
        pattern: the name the shortcuts came from (``"sparse-uniform"``, ...), or ``"custom"``.
        num_shortcuts: passed to ``make_pattern`` when ``shortcuts`` is omitted.
        high_res: feed g*g crops of the upsampled image alongside the low-res view.
        high_res_grid: g (2 -> four crops, the paper's setting).
        high_res_fusion: ``"cross-attention"`` (SparseCut), ``"concat"`` (tokens appended to the context) or
            ``"stack"`` (eq. 2's Y widened by the region's high-res tokens stacked along the channels: a fused token
            keeps every glyph its region's crops hold, where eq. 2 mixes them into D_v channels).
        adapter_attention: the adapter starts with an attention block (paper §4.1); ``False`` = LLaVA's projector only.
        adapter_num_heads: heads of the adapter attention; defaults to the vision tower's.
        adapter_kv_source: ``"high"`` (eq. 2: keys/values are the high-res tokens) or ``"low+high"``.
        adapter_attention_scope: ``"global"`` (eq. 2: every low-res token attends to every high-res token) or
            ``"local"``: each low-res token attends only to the g x g high-res tokens of its own image region (and,
            with ``"low+high"``, to itself), as Mini-Gemini's patch-info mining; high-res crop tokens carry no
            position in the whole image, so a global query cannot tell which crop's token lies under it.
        adapter_region_bias: with the local scope, a learned per-head bias for each place of the g x g region (and
            the query's own token), starting at this value for place h mod g^2 of head h (0 elsewhere), so that at
            the start the heads copy the region's tokens in order (a space-to-depth of the crops, kept trainable);
            ``None`` (default): no bias, every place alike.
        adapter_mlp: ``"mlp2x_gelu"`` (LLaVA-1.5's projector) or ``"linear"``.
        adapter_output_rms: every adapter's output is RMS-normalised per token and scaled by a learned per-channel
            weight that starts at this value, e.g. the RMS of the LLM's input embeddings (``from_backbones(...,
            adapter_output_rms="embeddings")``), so that visual tokens enter the LLM at the scale of its text tokens
            rather than at the tower's (a raw ViT hidden state through a fresh linear layer is tens of times larger);
            ``None`` (default, the paper's): no normalisation.
        adapter_bias: biases in the adapter MLP (LLaVA's ``multimodal_projector_bias``).
        zero_init_extra_shortcuts: every shortcut except the input one (``primary_shortcut``) gets a per-channel
            output gate initialised at 0, so an untrained model behaves exactly like its input shortcut alone, which
            is LLaVA-1.5 for every pattern that contains ``(L_v - 1, 1)`` (the paper does not say how extra shortcuts
            start; this is our choice, recorded in the config).
        reading_tokens: K >= 0 extra visual tokens per image with high-res views (0, the paper's: none), each from a
            learned query's attention over the crops' tokens at ViT layer ``reading_layer``, through an adapter MLP
            into the LLM's input after the M_v fused tokens (``sparsecut.reading.ReadingAdapter``). A small LLM does
            not learn to spell several characters out of one fused token in a CPU budget, but copies characters that
            arrive one per position (README "Step (m)").
        reading_layer: the ViT layer the reading queries look at (default: the input shortcut's, ``primary_shortcut``).
        reading_tower: the reading queries look at the crops through a vision tower of their own (the same
            ``vision_config``, ``model.reading_adapter.vision_tower``; not the paper's) instead of the shortcuts'
            tower: one pretrained to spell each text (``training.tiny.dense --spell``) reads, and one pretrained for
            places keeps the look-ups, and neither does both at this scale (README "Step (n)", "Step (s)").
        image_token_id, image_token: the placeholder token id / string in ``input_ids`` / prompts.
        image_seq_length: M_v, the visual tokens per view (derived from the vision config when omitted).
        vision_feature_select_strategy: ``"default"`` drops CLS (CLIP), ``"full"`` keeps every token (SigLIP).
    """

    model_type = "sparsecut"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    shortcuts: list | None = None
    pattern: str = "sparse-uniform"
    num_shortcuts: int | None = None
    high_res: bool = True
    high_res_grid: int = 2
    high_res_fusion: str = "cross-attention"
    adapter_attention: bool = True
    adapter_num_heads: int | None = None
    adapter_kv_source: str = "high"
    adapter_attention_scope: str = "global"
    adapter_region_bias: float | None = None
    adapter_mlp: str = "mlp2x_gelu"
    adapter_output_rms: float | None = None
    adapter_bias: bool = True
    adapter_hidden_act: str = "gelu"
    zero_init_extra_shortcuts: bool = True
    reading_tokens: int = 0
    reading_layer: int | None = None
    reading_tower: bool = False
    image_token_id: int = 32000
    image_token: str = "<image>"
    image_seq_length: int | None = None
    vision_feature_select_strategy: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        vision, text = self.vision_config, self.text_config
        if vision.model_type not in VISION_MODEL_TYPES:
            raise ValueError(f"vision_config must be one of {VISION_MODEL_TYPES}; got model_type {vision.model_type!r}.")
        if self.vision_feature_select_strategy is None:
            self.vision_feature_select_strategy = "full" if vision.model_type.startswith("siglip") else "default"
        _check_choice("vision_feature_select_strategy", self.vision_feature_select_strategy, FEATURE_STRATEGIES)
        _check_choice("adapter_mlp", self.adapter_mlp, MLP_TYPES)
        _check_choice("adapter_kv_source", self.adapter_kv_source, KV_SOURCES)
        _check_choice("adapter_attention_scope", self.adapter_attention_scope, ATTENTION_SCOPES)
        if self.adapter_region_bias is not None and self.adapter_attention_scope != "local":
            raise ValueError("adapter_region_bias biases the places of a local region: it needs "
                             "adapter_attention_scope='local'.")
        if self.adapter_output_rms is not None and not self.adapter_output_rms > 0:
            raise ValueError(f"adapter_output_rms is the scale adapter outputs start at: a number > 0 (or None for no "
                             f"normalisation); got {self.adapter_output_rms!r}.")
        _check_choice("high_res_fusion", self.high_res_fusion, HIGH_RES_FUSIONS)
        if not isinstance(self.high_res_grid, int) or isinstance(self.high_res_grid, bool) or self.high_res_grid < 1:
            raise ValueError(f"high_res_grid must be an integer >= 1 (2 gives four crops); got {self.high_res_grid!r}.")
        if self.high_res and self.high_res_grid == 1:
            raise ValueError("high_res=True needs high_res_grid >= 2 (grid 1 would repeat the low-res view); set high_res=False.")

        L_v, L_t = vision.num_hidden_layers, text.num_hidden_layers
        if self.shortcuts is None:
            self.shortcuts = make_pattern(self.pattern, L_v, L_t, self.num_shortcuts)
        self.shortcuts = [list(pair) for pair in validate_shortcuts(self.shortcuts, L_v, L_t)]
        self._check_reading(L_v)

        heads = self.adapter_num_heads or vision.num_attention_heads
        if vision.hidden_size % heads:
            raise ValueError(f"adapter_num_heads={heads} must divide the vision hidden size {vision.hidden_size}.")
        self.adapter_num_heads = heads

        patches = (vision.image_size // vision.patch_size) ** 2
        expected = patches + (1 if self.vision_feature_select_strategy == "full" and vision.model_type.startswith("clip") else 0)
        if self.image_seq_length is None:
            self.image_seq_length = expected
        elif self.image_seq_length != expected:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the vision tower: {vision.image_size}px images in "
                f"{vision.patch_size}px patches give {expected} tokens per view."
            )
        if self.adapter_attention_scope == "local" and self.image_seq_length != patches:
            raise ValueError(
                f"adapter_attention_scope='local' needs one token per patch ({patches}); this tower keeps its CLS token too "
                f"({self.image_seq_length} tokens): use vision_feature_select_strategy='default' or the global scope."
            )
        if self.high_res_fusion == "stack" and self.image_seq_length != patches:
            raise ValueError(
                f"high_res_fusion='stack' needs one token per patch ({patches}); this tower keeps its CLS token too "
                f"({self.image_seq_length} tokens): use vision_feature_select_strategy='default' or another fusion."
            )
        if not self.tie_word_embeddings and getattr(text, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def _check_reading(self, vision_layers: int) -> None:
        """Validate ``reading_tokens`` / ``reading_layer`` (the layer defaults to the input shortcut's)."""
        if not isinstance(self.reading_tokens, int) or isinstance(self.reading_tokens, bool) or self.reading_tokens < 0:
            raise ValueError(f"reading_tokens must be an integer >= 0 (0: none, the paper's); got {self.reading_tokens!r}.")
        if not isinstance(self.reading_tower, bool):
            raise ValueError(f"reading_tower is True or False; got {self.reading_tower!r}.")
        if not self.reading_tokens:
            if self.reading_layer is not None or self.reading_tower:
                raise ValueError("reading_layer and reading_tower say where the reading queries look: they need "
                                 "reading_tokens > 0.")
            return
        if not self.high_res or self.high_res_fusion == "concat":
            raise ValueError("reading_tokens read the high-res crops into the context: they need high_res=True and a "
                             "fused high-res (cross-attention or stack; concat already puts every crop token there).")
        if self.reading_layer is None:
            self.reading_layer = self.primary_shortcut[0]
        if not isinstance(self.reading_layer, int) or not 1 <= self.reading_layer <= vision_layers:
            raise ValueError(f"reading_layer must be a ViT layer in 1..{vision_layers}; got {self.reading_layer!r}.")

    @property
    def shortcut_pairs(self) -> list[Shortcut]:
        """The shortcuts as sorted tuples."""
        return [tuple(pair) for pair in self.shortcuts]

    @property
    def llava_shortcut(self) -> Shortcut:
        """LLaVA-1.5's only connection: the penultimate ViT layer into LLM layer 1."""
        return (self.vision_config.num_hidden_layers - 1, 1)

    @property
    def primary_shortcut(self) -> Shortcut:
        """The input shortcut, which starts open: into the lowest LLM layer used, from the deepest ViT layer feeding it.
        (L_v - 1, 1) for LLaVA, sparse-uniform, sparse-bottom and deepstack."""
        lowest = min(j for _, j in self.shortcut_pairs)
        return (max(i for i, j in self.shortcut_pairs if j == lowest), lowest)

    @property
    def num_views(self) -> int:
        """N: views per image fed to the vision tower (1 low-res + g*g crops)."""
        return 1 + self.high_res_grid**2 if self.high_res else 1

    def tokens_per_image(self, use_high_res: bool) -> int:
        """Visual tokens per image in the LLM context: M_v, N * M_v when high-res views are concatenated, or
        M_v + ``reading_tokens`` with high-res views and reading tokens."""
        concat = use_high_res and self.high_res_fusion == "concat"
        return self.image_seq_length * (self.num_views if concat else 1) + (self.reading_tokens if use_high_res else 0)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image with the config's own high-res setting."""
        return self.tokens_per_image(self.high_res)

    @property
    def mode(self) -> str:
        """``llava``, ``concat`` or ``sparsecut`` (see the class docstring)."""
        if self.high_res and self.high_res_fusion == "concat":
            return "concat"
        if not self.high_res and self.shortcut_pairs == [self.llava_shortcut] and not self.adapter_attention:
            return "llava"
        return "sparsecut"


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def pattern_config(base: SparseCutConfig, **changes) -> SparseCutConfig:
    """A copy of ``base`` with fields changed (e.g. ``pattern="llava", shortcuts=None``), re-validated. A copy made
    without high-res (``high_res=False``) also has no reading tokens unless ``changes`` name them: they read the
    crops, and the model runs without them when a call asks for the low-res view only."""
    data = base.to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        data.pop(key, None)
    if changes.get("high_res") is False and "reading_tokens" not in changes:
        changes = {**changes, "reading_tokens": 0, "reading_layer": None, "reading_tower": False}
    data.update(changes)
    return SparseCutConfig(**data)
