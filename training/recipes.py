"""Training recipes: small named JSON files in ``training/recipes/``; every field can be overridden from the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

RECIPE_DIR = os.path.join(os.path.dirname(__file__), "recipes")
MODULES = ("adapters", "reading_adapter", "language_model", "vision_tower")  # "adapters" includes the reading adapter
LORA_KEYS = {"r", "alpha", "dropout", "modules", "init"}  # init: a saved LoRA (peft folder) to continue
# LoRA "modules" -> which projections of each decoder layer get one
LORA_MODULES = {"all": r"self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj", "attention": r"self_attn\.(q|k|v|o)_proj"}


@dataclass
class Recipe:
    description: str = ""
    train_modules: list = field(default_factory=lambda: ["adapters"])  # subset of MODULES; the rest stay frozen
    learning_rate: float = 1e-3
    adapter_learning_rate: float | None = None  # None: learning_rate (LoRA recipe: adapters at their own lr)
    vision_learning_rate: float | None = None  # None: learning_rate (unfrozen-ViT recipe)
    global_batch_size: int = 256  # = per_device_batch_size x gradient accumulation x processes
    per_device_batch_size: int = 32
    epochs: float = 1.0
    max_steps: int | None = None  # caps the optimizer steps (None: the epochs decide)
    warmup_ratio: float = 0.03  # LLaVA-1.5
    lr_schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0  # LLaVA-1.5
    max_grad_norm: float = 1.0
    template: str = "auto"  # plain | vicuna_v1 | tokenizer | auto
    max_length: int = 2048  # samples longer than this are bad data (never truncated: images would be cut)
    mixed_precision: str = "bf16"  # no | fp16 | bf16 (autocast, fp32 master weights; bf16 also on CPUs with AVX-512 bf16/AMX)
    gradient_checkpointing: bool = False
    group_by_modality_length: bool = False
    lora: dict | None = None  # {"r", "alpha", "dropout", "modules": "all" | "attention", "init"} -> peft LoRA on the LLM's
    # projections; "init": a saved LoRA (peft adapter folder) with the same r, alpha and projections, trained on from there
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 42
    num_workers: int = 4

    def validate(self) -> None:
        unknown = [m for m in self.train_modules if m not in MODULES]
        if unknown or not self.train_modules:
            raise ValueError(f"train_modules must be a non-empty subset of {MODULES}; got {self.train_modules}.")
        if self.lr_schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_schedule must be cosine, linear or constant; got {self.lr_schedule!r}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16; got {self.mixed_precision!r}.")
        if self.global_batch_size < 1 or self.per_device_batch_size < 1:
            raise ValueError("Batch sizes must be positive.")
        if self.lora is not None and sorted(set(self.lora) - LORA_KEYS):
            raise ValueError(f"Unknown LoRA settings {sorted(set(self.lora) - LORA_KEYS)}; known: {sorted(LORA_KEYS)}.")
        if self.lora is not None and self.lora.get("modules", "all") not in LORA_MODULES:
            raise ValueError(f"LoRA modules must be all (every attention and MLP projection) or attention (q, k, v, o); "
                             f"got {self.lora['modules']!r}.")
        if self.lora is not None and "language_model" in self.train_modules:
            raise ValueError("With LoRA the LLM is trained through its LoRA weights; drop 'language_model' from train_modules.")


def recipe_names() -> list[str]:
    return sorted(name[:-5] for name in os.listdir(RECIPE_DIR) if name.endswith(".json"))


def load_recipe(name_or_path: str, overrides: dict | None = None) -> Recipe:
    """A recipe by name (``stage1``) or JSON path, with ``overrides`` (field -> value) applied, validated."""
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(RECIPE_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise ValueError(f"Unknown recipe {name_or_path!r}; named recipes: {', '.join(recipe_names())}, or a JSON path.")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Recipe {path} has unknown fields {unknown}; known: {sorted(known)}.")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recipe = Recipe(**data)
    recipe.validate()
    return recipe


def parse_field(name: str, text: str):
    """A CLI string as the value of recipe field ``name`` (JSON for lists and dicts; ``none`` for None)."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(Recipe)}[name]
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("list") or kind.startswith("dict"):
        return json.loads(text)
    if kind.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--{name.replace('_', '-')}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if kind.startswith("int"):
        value = float(text)
        if value != int(value):
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer, got {text!r}")
        return int(value)
    if kind.startswith("float"):
        return float(text)
    return text
