"""The tiny family's members, its recipe and budget, its data splits and its backbones.

The family is SparseCut at miniature scale on a real pretrained LLM: a CLIP-style ViT pretrained here on the
synthetic scenes with dense per-patch labels (``dense.py``) and SmolLM2-135M-Instruct (``sparsecut.base_models``;
installed from its wheel, in ChatML). Scenes use the ``cells-96`` layout, whose 48-px low-res view has one 16-px
patch per scene cell. Each member is trained by the training CLI: stage 1 the adapters on captions that name every
object in row order; stage 2 the adapters and a LoRA on the LLM on multi-question conversations. Members ship as
deltas over the base (``export.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace

from .tower import tower_config, tower_image_processor
from sparsecut.reading import READER_WEIGHTS
from sparsecut.evaluation.synthetic.dataset import write_split
from training.recipes import LORA_MODULES
from .dense import DENSE_BATCH, DENSE_LR, DENSE_RECORD, pretrain_dense
from sparsecut.evaluation.synthetic.scenes import layout_named

# name -> how it differs; everything else (backbones, recipe, budget) is shared. Keys: pattern, high_res,
# adapter_attention (default True), high_res_fusion (default cross-attention), reading_tokens (default 0)
FAMILY = {
    # the paper's cross-attention fusion ("high_res_fusion": "stack" trained worse in session 17: README, step (l)),
    # and three reading tokens (README, step (n))
    "sparsecut-tiny": {"pattern": "sparse-uniform", "high_res": True, "reading_tokens": 3},
    "llava-tiny": {"pattern": "llava", "high_res": False, "adapter_attention": False},  # LLaVA's MLP projector only
    "sparsecut-tiny-lowres": {"pattern": "sparse-uniform", "high_res": False},
    "sparsecut-tiny-dense-bottom": {"pattern": "dense-bottom", "high_res": False},
    "sparsecut-tiny-dense-uniform": {"pattern": "dense-uniform", "high_res": False},
    "sparsecut-tiny-sparse-bottom": {"pattern": "sparse-bottom", "high_res": False},
    "sparsecut-tiny-sparse-top": {"pattern": "sparse-top", "high_res": False},
    "sparsecut-tiny-sparse-reverse-uniform": {"pattern": "sparse-reverse-uniform", "high_res": False},
}
# split seeds: training splits and the held-out test split never share a generator
SPLIT_SEEDS = {"pretrain": 1, "instruct": 2, "backbone": 3, "reading": 4, "test": 9}
BASE_TEXT = "smollm2-135m-instruct"  # the family's LLM (sparsecut.base_models)
CHAT_TEMPLATE = "chatml"  # ChatML without SmolLM2's default system prompt
LAYOUT = layout_named("cells-96")
READING_TEXT_PROBABILITY = 0.8  # the reading stage's scenes: a text in most (half the benchmark's have none)
TOWER_SPELL = False  # whether the tower's dense labels also spell each text by position (dense.py; README, step (l))
# a member ships as its adapters + LoRA in fp16 (the family must add <= 30 MB to git): one-layer adapters (7 x 140K
# parameters; LLaVA-1.5's two-layer MLP would be 7 x 470K) and a LoRA: rank 4 on the attention projections, ~2.9 MB
# a member; rank 8 on every projection, ~7.2 MB, learns the look-ups much faster (README, step (n) 4)
ADAPTER_MLP = "linear"  # the adapters' MLP (sparsecut.config.MLP_TYPES)


@dataclass
class Budget:
    pretrain_images: int = 3000  # stage-1 captions
    instruct_images: int = 3000  # stage-2 conversations, one per scene
    test_images: int = 320  # ~6.3 questions each: >= 2,000 held-out questions
    tower_images: int = 3000  # the tower's dense labels come from these scenes of a separate split
    tower_steps: int = 1600
    stage1_steps: int = 100
    stage1_lr: float = 1e-3
    stage2_steps: int = 600  # 400 left the question loss falling (README, step (c) -> (d))
    stage2_lr: float = 3e-3  # the LoRA's
    adapter_lr: float = 1e-3  # the adapters' in stage 2
    lora_rank: int = 4  # alpha = 2 x rank
    lora_modules: str = "attention"  # the LLM projections with a LoRA: attention (q, k, v, o) or all (+ the MLP's)
    turns: int = 6  # questions per stage-2 conversation
    relation_turns: int = 0  # more stage-2 turns per conversation, each a left-of / above question (the relation drill)
    tally_turns: int = 0  # more stage-2 turns after those, each a count question, half as a choice (the tally drill)
    recount_turns: int = 0  # then this many pairs of turns: a count asked openly, then lettered (the recount drill)
    balanced_counts: int = 0  # 1: the tally and recount drills draw their answers balanced (questions.count)
    drills_first: int = 0  # 1: each conversation asks its drill turns first, then the families' (README, step (w))
    reading_steps: int = 0  # a reading stage before stage 2 (with --reading-tower): the reading adapter and the LoRA
    reading_images: int = 3000  # its scenes, one reading or unanswerable question each
    reading_lr: float = 1.5e-3  # the LoRA's there (the reading adapter's: adapter_lr)
    reading_look_ups: int = 0  # turns of stage 2's other families after each reading-stage question (its LoRA is theirs)
    batch: int = 16
    save_every: int = 25  # optimizer steps between checkpoints: what an interruption can lose


# budget field -> the drill it adds (questions.DRILLS)
DRILL_FIELDS = {"relation_turns": "relation", "tally_turns": "tally", "recount_turns": "recount"}
MAY_BE_ZERO = (*DRILL_FIELDS, "reading_steps", "reading_look_ups", "stage2_steps",  # stage 2: 0 after a reading stage
               "balanced_counts", "drills_first")
SWITCHES = ("balanced_counts", "drills_first")  # 0 or 1


def budget_with(base: Budget, overrides: str) -> Budget:
    """``base`` with ``"stage2_steps=6000,instruct_images=20000"``-style overrides (e.g. a longer run on a GPU).
    An unknown field, a value of the wrong type, a number <= 0 (< 0 for a count that may be 0, e.g. ``relation_turns``)
    or an unknown ``lora_modules`` raises ValueError naming it."""
    names = [f.name for f in fields(Budget)]
    changes = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"bad budget override {item!r}: use FIELD=VALUE with FIELD one of {', '.join(names)}.")
        cast = type(getattr(base, key))  # int, float for the learning rates, str for lora_modules
        try:
            changes[key] = cast(value)
        except ValueError:
            raise ValueError(f"bad budget override {item!r}: {key} takes {'an integer' if cast is int else 'a number'}.") from None
        if cast is str:
            if changes[key] not in LORA_MODULES:
                raise ValueError(f"bad budget override {item!r}: {key} is one of {', '.join(LORA_MODULES)}.")
        elif key in SWITCHES and changes[key] not in (0, 1):
            raise ValueError(f"bad budget override {item!r}: {key} is 0 (off) or 1 (on).")
        elif changes[key] < 0 or (changes[key] == 0 and key not in MAY_BE_ZERO):
            raise ValueError(f"bad budget override {item!r}: {key} must be {'>= 0' if key in MAY_BE_ZERO else 'positive'}.")
    budget = replace(base, **changes)
    if budget.balanced_counts and not (budget.tally_turns or budget.recount_turns):
        raise ValueError(f"bad budget overrides {overrides!r}: balanced_counts draws the answers of the tally and "
                         "recount drills; set tally_turns or recount_turns too.")
    if budget.drills_first and not drills_of(budget):
        raise ValueError(f"bad budget overrides {overrides!r}: drills_first puts the drill turns first; set "
                         "relation_turns, tally_turns or recount_turns too.")
    return budget


def drills_of(budget: Budget) -> tuple[str, ...]:
    """The drill turns ``budget`` adds to each stage-2 conversation, in order, e.g. ("relation", "tally", "tally")."""
    return tuple(drill for field, drill in DRILL_FIELDS.items() for _ in range(getattr(budget, field)))


def split_seed(seed: int, split: str) -> int:
    return 1000 * seed + SPLIT_SEEDS[split]


def write_data(root: str, budget: Budget, seed: int) -> None:
    data = os.path.join(root, "data")
    write_split(data, "pretrain", split_seed(seed, "pretrain"), budget.pretrain_images, "pretrain", layout=LAYOUT)
    write_split(data, "instruct", split_seed(seed, "instruct"), budget.instruct_images, "instruct", turns=budget.turns,
                layout=LAYOUT, drills=drills_of(budget), balanced_counts=bool(budget.balanced_counts),
                drills_first=bool(budget.drills_first))
    if budget.reading_steps:
        write_split(data, "reading", split_seed(seed, "reading"), budget.reading_images, "reading", layout=LAYOUT,
                    text_probability=READING_TEXT_PROBABILITY, look_up_turns=budget.reading_look_ups)
    write_split(data, "test", split_seed(seed, "test"), budget.test_images, "eval", layout=LAYOUT)


BACKBONES = "backbones.json"  # in OUTPUT/backbones: which tower and LLM the run's members start from


def backbone_dirs(root: str) -> tuple[str, str]:
    """(vision tower folder, text backbone: an installed base model's name or a causal-LM folder) of run ``root``."""
    with open(os.path.join(root, "backbones", BACKBONES), encoding="utf-8") as handle:
        text = json.load(handle)["text"]
    return os.path.join(root, "backbones", "vision"), text


def build_backbones(root: str, budget: Budget, seed: int, text: str | None = None, tower_from: str | None = None) -> None:
    """The vision tower, pretrained with dense labels on the backbone split (``dense.py``), saved with its image
    processor in ``root/backbones/vision``; ``text`` (default ``BASE_TEXT``) recorded as the run's LLM. With
    ``tower_from`` the tower is not pretrained here: a shipped family folder gives that family's tower, so that the
    members this run trains can join it (``shipped_tower``); a ``python -m training.tiny.dense`` output folder gives
    that tower when it was trained exactly as this run would train it (``dense_tower``). Returns at once when the
    run has its backbones (it keeps the LLM and tower it started with: another ``text`` or ``tower_from`` raises)."""
    folder = os.path.join(root, "backbones")
    record = os.path.join(folder, BACKBONES)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as handle:
            built = json.load(handle)
        if text is not None and built["text"] != text:
            raise ValueError(f"{root} was started with LLM {built['text']!r}, not {text!r}: use another --output.")
        started_from = built.get("tower_from")
        if tower_from is not None and not _same_tower(built, tower_from):
            raise ValueError(f"{root} was started with the tower of {started_from or 'its own pretraining'}, not of "
                             f"{tower_from}: use another --output.")
        return
    import time

    started = time.time()
    if tower_from is not None and os.path.isfile(os.path.join(tower_from, DENSE_RECORD)):
        tower = dense_tower(tower_from, os.path.join(folder, "vision"), budget, seed)
    elif tower_from is not None:
        tower = shipped_tower(tower_from, os.path.join(folder, "vision"), text or BASE_TEXT, seed)
    else:
        model, losses = pretrain_dense(split_seed(seed, "backbone"), budget.tower_images, budget.tower_steps,
                                       tower_config(view=LAYOUT.view), layout=LAYOUT, spell=TOWER_SPELL)
        model.save_pretrained(os.path.join(folder, "vision"))
        tower_image_processor(LAYOUT.view).save_pretrained(os.path.join(folder, "vision"))
        tower = _tower_record(losses[-1], time.time() - started, seed, budget.tower_images, budget.tower_steps, TOWER_SPELL)
    with open(record, "w", encoding="utf-8") as handle:  # written last: its presence means the backbones are done
        json.dump({"text": text or BASE_TEXT, **tower}, handle, indent=2)


def tower_weights(tower_from: str) -> str:
    """The weights file of a ``--tower`` source: a dense-pretraining output's model, or a shipped family's stored tower."""
    if os.path.isfile(os.path.join(tower_from, DENSE_RECORD)):
        return os.path.join(tower_from, "model.safetensors")
    from sparsecut.zoo import manifest

    return os.path.join(tower_from, manifest(tower_from)["shared"], "vision.safetensors")


def _tower_source(tower_from: str) -> dict:
    """Where a run's tower came from: the folder, and its weights' sha256 (what a resumed run is checked against)."""
    from sparsecut.base_models import sha256_of

    return {"tower_from": os.path.abspath(tower_from), "tower_from_sha256": sha256_of(tower_weights(tower_from))}


def _same_tower(built: dict, tower_from: str) -> bool:
    """Whether ``tower_from`` holds the tower run record ``built`` started from: the same weights, wherever the folder
    now is (a run recorded before the digest: the same folder)."""
    if "tower_from" not in built:
        return False
    if "tower_from_sha256" not in built:
        return built["tower_from"] == os.path.abspath(tower_from)
    try:
        return _tower_source(tower_from)["tower_from_sha256"] == built["tower_from_sha256"]
    except (OSError, ValueError):
        return False


def dense_tower(tower_dir: str, folder: str, budget: Budget, seed: int) -> dict:
    """Copy the tower that ``python -m training.tiny.dense --output tower_dir`` trained into ``folder``; return its
    record as ``build_backbones`` would write it (``tower_from`` added). Raises, naming each difference, unless it was
    trained with exactly the call this run would make (the same scenes, steps, seed split, batch, learning rate,
    spelling and layout), so that reusing it changes nothing but the time."""
    import shutil

    with open(os.path.join(tower_dir, DENSE_RECORD), encoding="utf-8") as handle:
        made = json.load(handle)
    wanted = {"seed": split_seed(seed, "backbone"), "scenes": budget.tower_images, "steps": budget.tower_steps,
              "batch": DENSE_BATCH, "lr": DENSE_LR, "spell": TOWER_SPELL, "layout": LAYOUT.name}
    wrong = [f"{key} {made.get(key)!r} (this run: {value!r})" for key, value in wanted.items() if made.get(key) != value]
    if wrong:
        raise ValueError(f"{tower_dir} was trained with {', '.join(wrong)}: not the tower this run would train. Train "
                         f"it with `python -m training.tiny.dense --output DIR --layout {LAYOUT.name} --scenes "
                         f"{budget.tower_images} --steps {budget.tower_steps} --seed {wanted['seed']}"
                         f"{' --spell' if TOWER_SPELL else ''}`, or drop --tower to train it in this run.")
    shutil.copytree(tower_dir, folder, dirs_exist_ok=True)
    return {**_tower_record(made["losses"][-1], made["seconds"], seed, made["scenes"], made["steps"], made["spell"]),
            **_tower_source(tower_dir)}


def reading_tower_record(tower_dir: str) -> dict:
    """How the reading tower in ``tower_dir`` (a ``python -m training.tiny.dense`` output) was pretrained, as a member's
    record keeps it: its call, time, final loss, and its weights' sha256. Raises unless it is such an output drawn in
    this pipeline's layout."""
    path = os.path.join(tower_dir, DENSE_RECORD)
    if not os.path.isfile(path):
        raise ValueError(f"{tower_dir} is not a python -m training.tiny.dense output (no {DENSE_RECORD}): pretrain the "
                         f"reading tower with it, e.g. --spell, so that the model card can say how it was made.")
    with open(path, encoding="utf-8") as handle:
        made = json.load(handle)
    if made["layout"] != LAYOUT.name:
        raise ValueError(f"{tower_dir} was pretrained on the {made['layout']} layout; this pipeline draws {LAYOUT.name}.")
    source = _tower_source(tower_dir)
    record = {"from": source["tower_from"], "sha256": source["tower_from_sha256"], "final_loss": made["losses"][-1],
              **{k: made[k] for k in ("seconds", "scenes", "steps", "seed", "spell", "layout")}}
    return {**record, **({"reader": _reader_record(tower_dir)} if os.path.isfile(os.path.join(tower_dir, READER_WEIGHTS))
                         else {})}


def _reader_record(reader_dir: str) -> dict:
    """How the reader in ``reader_dir`` (a ``python -m training.tiny.reader`` output) was aligned: its call, time,
    final loss, held-out exact texts, and its weights' sha256."""
    from sparsecut.base_models import sha256_of

    from .reader import READER_RECORD

    with open(os.path.join(reader_dir, READER_RECORD), encoding="utf-8") as handle:
        made = json.load(handle)
    return {"sha256": sha256_of(os.path.join(reader_dir, READER_WEIGHTS)), "final_loss": made["final_loss"],
            "held_out": {k: made["after"][k] for k in ("texts", "numbers", "words")} if made.get("after") else None,
            **{k: made[k] for k in ("member", "scenes", "steps", "seed", "seconds")}}


def _tower_record(final_loss: float, seconds: float, seed: int, scenes: int, steps: int, spell: bool) -> dict:
    """How a run's tower was pretrained, as ``backbones.json`` and the family manifest record it."""
    return {"tower_final_loss": final_loss, "tower_seconds": seconds, "tower_seed": seed, "tower_scenes": scenes,
            "tower_steps": steps, "tower_spell": spell, "layout": LAYOUT.name}


def shipped_tower(family_dir: str, folder: str, text: str, seed: int) -> dict:
    """Write the vision tower that the members of shipped family ``family_dir`` share (``shared/vision.safetensors``,
    as fp32) with the family's image processor into ``folder``; return its record from the family's manifest
    (``tower_from`` added). Raises if the family was trained on another LLM than ``text``, on another layout or
    with another seed than ``seed`` (its members are scored on that seed's held-out split), or does not record its
    tower."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    from sparsecut.config import SparseCutConfig
    from sparsecut.zoo import manifest

    entry = manifest(family_dir)
    tower = entry.get("tower")
    if tower is None or entry.get("base", {}).get("text") != text:
        raise ValueError(f"{family_dir} is not a family on {text} with a recorded tower (its manifest has "
                         f"base {entry.get('base', {}).get('text')!r}, tower record: {'yes' if tower else 'no'}): "
                         "train a tower in this run instead (drop --tower).")
    if tower["layout"] != LAYOUT.name:
        raise ValueError(f"{family_dir}'s tower was trained on the {tower['layout']} layout, this pipeline draws "
                         f"{LAYOUT.name}: train a tower in this run instead (drop --tower).")
    if tower["tower_seed"] != seed:
        raise ValueError(f"{family_dir} was trained with --seed {tower['tower_seed']}, not {seed}: pass --seed "
                         f"{tower['tower_seed']} to add members to it.")
    member = os.path.join(family_dir, next(iter(entry["models"].values())))
    model = CLIPVisionModel(SparseCutConfig.from_pretrained(member).vision_config)
    weights = load_file(tower_weights(family_dir))
    model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})  # strict: every tensor, no other
    model.save_pretrained(folder)
    tower_image_processor(LAYOUT.view).save_pretrained(folder)
    return {**tower, **_tower_source(family_dir)}


MIXED_PRECISION = "mixed_precision.json"  # in OUTPUT: --mixed-precision auto's decision, kept for the run's reruns


def cpu_mixed_precision(root: str, budget: Budget, threads: int | None = None) -> tuple[str, float | None]:
    """("bf16", speedup) when a training step of ``sparsecut-tiny`` runs at least ``MARGIN`` times faster under bf16
    autocast than in fp32 on this CPU with ``threads`` threads (each member's share; ``bf16_step_speedup``), ("no",
    speedup) otherwise; ("no", None) on a CPU without native bf16. The decision is written to
    ``root/mixed_precision.json`` and a rerun takes it from there: a resumed run trains on in the precision it started
    with, whatever a new timing would say."""
    from sparsecut.precision import MARGIN, cpu_supports_bf16

    record = os.path.join(root, MIXED_PRECISION)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as handle:
            decided = json.load(handle)
        return decided["precision"], decided["speedup"]
    speedup = bf16_step_speedup(root, budget, threads) if cpu_supports_bf16() else None
    precision = "bf16" if speedup is not None and speedup >= MARGIN else "no"
    with open(record, "w", encoding="utf-8") as handle:
        json.dump({"precision": precision, "speedup": speedup, "threads": threads}, handle)
    return precision, speedup


def bf16_step_speedup(root: str, budget: Budget, threads: int | None) -> float:
    """fp32 time / bf16-autocast time of one training step of ``sparsecut-tiny`` (adapters + LLM) on the run's first
    ``budget.batch`` instruct records, the LM head at the labelled positions as the trainer computes it (the full
    (B, T, V) logits would time the head, not the step, and hold gigabytes), with ``threads`` threads."""
    import torch

    from sparsecut.convert import from_backbones
    from sparsecut.precision import autocast_step_speedup
    from training.data import collate_records, read_records, supervised_positions

    vision, text = backbone_dirs(root)
    spec = FAMILY["sparsecut-tiny"]
    model, processor = from_backbones(vision, text, pattern=spec["pattern"], high_res=spec["high_res"],
                                      chat_template=CHAT_TEMPLATE)
    data = os.path.join(root, "data")
    records = read_records(os.path.join(data, "instruct.json"))[: budget.batch]
    batch = collate_records(records, processor, os.path.join(data, "images"), processor.template, spec["high_res"])
    keep, _ = supervised_positions(batch["labels"])
    inputs = {**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, "use_cache": False,
              "logits_to_keep": keep}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return autocast_step_speedup(model, inputs)
    finally:
        torch.set_num_threads(previous)
