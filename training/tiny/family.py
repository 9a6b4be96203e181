"""The tiny family's members, its budget, its data splits and its pretrained backbones."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace

from .clip import clip_config, crop_caption, pretrain_clip, tower_image_processor
from .dataset import scene_for, write_split
from .lm import lm_config, pretrain_lm
from .questions import FAMILIES, ask, caption
from .tokenizer import build_tokenizer

# name -> how it differs; everything else (backbones, recipe, budget) is shared
FAMILY = {
    "sparsecut-tiny": {"pattern": "sparse-uniform", "high_res": True},
    "llava-tiny": {"pattern": "llava", "high_res": False, "adapter_attention": False},  # LLaVA's MLP projector only
    "sparsecut-tiny-lowres": {"pattern": "sparse-uniform", "high_res": False},
    "sparsecut-tiny-dense-bottom": {"pattern": "dense-bottom", "high_res": False},
    "sparsecut-tiny-dense-uniform": {"pattern": "dense-uniform", "high_res": False},
    "sparsecut-tiny-sparse-bottom": {"pattern": "sparse-bottom", "high_res": False},
    "sparsecut-tiny-sparse-top": {"pattern": "sparse-top", "high_res": False},
    "sparsecut-tiny-sparse-reverse-uniform": {"pattern": "sparse-reverse-uniform", "high_res": False},
}
# split seeds: training splits and the held-out test split never share a generator
SPLIT_SEEDS = {"pretrain": 1, "instruct": 2, "backbone": 3, "test": 9}


@dataclass
class Budget:
    pretrain_images: int = 3000
    instruct_images: int = 6000
    test_images: int = 320  # ~6.3 questions each: >= 2,000 held-out questions
    lm_steps: int = 300
    clip_steps: int = 600
    stage1_steps: int = 100
    stage2_steps: int = 600
    stage2_lr: float = 2e-3
    batch: int = 32


def budget_with(base: Budget, overrides: str) -> Budget:
    """``base`` with ``"stage2_steps=6000,instruct_images=20000"``-style overrides (e.g. a longer run on a GPU).
    An unknown field, a value of the wrong type or a value <= 0 raises ValueError naming it."""
    names = [f.name for f in fields(Budget)]
    changes = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"bad budget override {item!r}: use FIELD=VALUE with FIELD one of {', '.join(names)}.")
        cast = type(getattr(base, key))  # int, or float for the learning rate
        try:
            changes[key] = cast(value)
        except ValueError:
            raise ValueError(f"bad budget override {item!r}: {key} takes {'an integer' if cast is int else 'a number'}.") from None
        if changes[key] <= 0:
            raise ValueError(f"bad budget override {item!r}: {key} must be positive.")
    return replace(base, **changes)


def split_seed(seed: int, split: str) -> int:
    return 1000 * seed + SPLIT_SEEDS[split]


def write_data(root: str, budget: Budget, seed: int) -> None:
    data = os.path.join(root, "data")
    write_split(data, "pretrain", split_seed(seed, "pretrain"), budget.pretrain_images, "pretrain")
    write_split(data, "instruct", split_seed(seed, "instruct"), budget.instruct_images, "instruct")
    write_split(data, "test", split_seed(seed, "test"), budget.test_images, "eval")


def backbone_dirs(root: str) -> tuple[str, str]:
    return os.path.join(root, "backbones", "vision"), os.path.join(root, "backbones", "text")


def corpus(seed: int, images: int) -> list[str]:
    """The synthetic text of ``images`` scenes: captions, crop captions, and questions with answers in the chat
    template's format (so the tokenizer learns its words, and the LM the turn structure stage 2 uses)."""
    texts = []
    for index in range(images):
        scene, rng = scene_for(seed, index)
        texts.append(caption(scene))
        texts += [crop_caption(scene, q) for q in range(4)]
        texts += [f"USER: {qa.question} ASSISTANT: {qa.answer}" for family in FAMILIES if (qa := ask(scene, family, rng)) is not None]
    return texts


def build_backbones(root: str, budget: Budget, seed: int) -> None:
    """Tokenizer, LM and CLIP ViT from the backbone split; saved as HF folders (vision/, text/)."""
    vision_dir, text_dir = backbone_dirs(root)
    if os.path.isfile(os.path.join(vision_dir, "model.safetensors")) and os.path.isfile(os.path.join(text_dir, "model.safetensors")):
        return
    backbone_seed = split_seed(seed, "backbone")
    texts = corpus(backbone_seed, budget.pretrain_images)
    tokenizer = build_tokenizer(texts)
    lm, lm_losses = pretrain_lm(tokenizer, texts, steps=budget.lm_steps, seed=seed, config=lm_config(tokenizer))
    lm.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    tower, clip_losses = pretrain_clip(tokenizer, backbone_seed, budget.pretrain_images, steps=budget.clip_steps,
                                       config=clip_config(tokenizer))
    tower.save_pretrained(vision_dir)
    tower_image_processor().save_pretrained(vision_dir)
    with open(os.path.join(root, "backbones", "pretraining.json"), "w", encoding="utf-8") as handle:
        json.dump({"lm_final_loss": lm_losses[-1], "clip_final_loss": clip_losses[-1], "corpus_texts": len(texts)}, handle, indent=2)


def cpu_mixed_precision(root: str, budget: Budget, threads: int | None = None) -> tuple[str, float | None]:
    """("bf16", speedup) when a training step of ``sparsecut-tiny`` (stage 2: adapters + LLM, on one batch of the
    instruct split) runs at least ``MARGIN`` times faster under bf16 autocast than in fp32 on this CPU with
    ``threads`` threads (each member's share), ("no", speedup) otherwise; ("no", None) on a CPU without native bf16."""
    import torch

    from sparsecut.convert import from_backbones
    from sparsecut.precision import MARGIN, autocast_step_speedup, cpu_supports_bf16
    from training.data import collate_records, read_records

    if not cpu_supports_bf16():
        return "no", None
    vision, text = backbone_dirs(root)
    spec = FAMILY["sparsecut-tiny"]
    model, processor = from_backbones(vision, text, pattern=spec["pattern"], high_res=spec["high_res"])
    data = os.path.join(root, "data")
    records = read_records(os.path.join(data, "instruct.json"))[: budget.batch]
    batch = collate_records(records, processor, os.path.join(data, "images"), processor.template, spec["high_res"])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        speedup = autocast_step_speedup(model, inputs)
    finally:
        torch.set_num_threads(previous)
    return ("bf16" if speedup >= MARGIN else "no"), speedup
