"""Continue shipped members: stage 2 trained on from a shipped family's member instead of from a new stage 1.

``python -m training.tiny --continue-from assets/sparsecut-tiny`` starts each member's stage 2 from what the family
ships for it (its adapters and its LoRA, fp16 there, fp32 here; the base LLM and the family's tower) and trains the
same LoRA on for the budget's ``stage2_steps`` with the budget's data and learning rates, so that a member's training
can go on in later runs (e.g. a new drill) and its delta keeps its size. The member's record keeps the record of the
member it continued (``continued_from``), so the model card names every command in its history.

With ``--reading-tower DIR`` a reading stage comes first: the member's reading tokens get that tower, and their
fresh adapter and the member's LoRA are trained on reading questions (``training/recipes/stage_reading.json``; the
shortcuts' adapters frozen); stage 2 then starts from the shipped member with the reading stage's reading adapter,
tower and LoRA in place of its own (``grafted_start``). Without ``--reading-tower`` (the budget's ``reading_steps``
alone) the reading stage trains on the reading adapter and tower the member already has. The budget's
``reading_look_ups`` follows each reading question with look-up turns, and with ``stage2_steps=0`` the reading
stage's output is the member (no stage 2).
"""

from __future__ import annotations

import os

START = "-start"  # models/<name>-start: the shipped member this run continues, unmerged (its LoRA in lora/)
GRAFTED = "-start-read"  # models/<name>-start with the reading stage's reading adapter, tower and LoRA: stage 2's start
READING_PREFIX = "model.reading_adapter."  # the reading adapter's keys (its own tower's too)


def check_continuable(family_dir: str, names: list[str], budget) -> None:
    """Raise ValueError unless ``family_dir`` ships every member of ``names`` with a LoRA of the budget's rank and
    projections (the LoRA a continuation trains on), saying what differs and how to ask for it."""
    from sparsecut.zoo import LORA_DIR, manifest
    from training.recipes import LORA_MODULES
    from training.trainer import saved_lora_config

    shipped = manifest(family_dir)["models"]
    missing = [name for name in names if name not in shipped]
    if missing:
        raise ValueError(f"{family_dir} ships no {', '.join(missing)} to continue (it ships {', '.join(shipped)}).")
    for name in names:
        saved = saved_lora_config(os.path.join(family_dir, shipped[name], LORA_DIR))
        modules = next((key for key, pattern in LORA_MODULES.items() if saved["target_modules"].endswith(f".({pattern})")), None)
        if saved["r"] != budget.lora_rank or modules != budget.lora_modules:
            raise ValueError(f"{name} in {family_dir} has a rank-{saved['r']} LoRA on {modules or saved['target_modules']}, "
                             f"the budget asks rank {budget.lora_rank} on {budget.lora_modules}: continue it with "
                             f"--budget lora_rank={saved['r']},lora_modules={modules}.")


def continued_start(family_dir: str, name: str, root: str) -> str:
    """``root/models/<name>-start``: member ``name`` of ``family_dir`` as a training start (the base LLM unmerged, its
    LoRA in ``lora/``), written once (a rerun keeps it: the family may have been reshipped since)."""
    from sparsecut.zoo import write_member

    from .ship import assets_at

    folder = os.path.join(root, "models", name + START)
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return folder
    with assets_at(family_dir):
        write_member(name, folder, merge_lora=False)
    return folder


def grafted_start(start: str, reading: str, root: str, name: str) -> str:
    """``root/models/<name>-start-read``: the training start ``start`` (a member, the base LLM unmerged, its LoRA in
    ``lora/``) with the reading adapter, reading tower and LoRA of ``reading`` (a finished reading stage) in place of
    its own, and ``config.reading_tower`` set; written once (beside it, then renamed)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from sparsecut.config import SparseCutConfig
    from sparsecut.zoo import LORA_DIR

    folder = os.path.join(root, "models", name + GRAFTED)
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return folder
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(start, tmp)
    weights = {k: v for k, v in load_file(os.path.join(start, "model.safetensors")).items() if not k.startswith(READING_PREFIX)}
    with safe_open(os.path.join(reading, "model.safetensors"), framework="pt") as stored:  # its reading keys only
        read = {k: stored.get_tensor(k) for k in stored.keys() if k.startswith(READING_PREFIX)}
    save_file({**weights, **read}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    config = SparseCutConfig.from_pretrained(reading)
    if not config.reading_tower:
        raise ValueError(f"{reading} has no reading tower: it is not a reading stage's output.")
    config.save_pretrained(tmp)
    shutil.rmtree(os.path.join(tmp, LORA_DIR))
    shutil.copytree(os.path.join(reading, LORA_DIR), os.path.join(tmp, LORA_DIR))
    os.replace(tmp, folder)
    return folder


def shipped_config(family_dir: str, name: str) -> dict:
    """The ``config.json`` of member ``name`` as ``family_dir`` ships it."""
    import json

    from sparsecut.zoo import manifest

    with open(os.path.join(family_dir, manifest(family_dir)["models"][name], "config.json"), encoding="utf-8") as handle:
        return json.load(handle)


def shipped_record(family_dir: str, name: str) -> dict:
    """How member ``name`` shipped in ``family_dir`` was trained (its record in the family's ``results.json``)."""
    from .ship import previous_members

    record = previous_members(family_dir, [name]).get(name)  # raises where results.json does not record it
    if record is None:
        raise ValueError(f"{family_dir} has no results.json saying how {name} was trained: it cannot be continued "
                         "with its history; retrain it instead.")
    return record


def lineage(record: dict) -> list[dict]:
    """A member's records from its first training to ``record`` (each continuation's ``continued_from`` before it)."""
    chain = [record]
    while "continued_from" in chain[0]:
        chain.insert(0, chain[0]["continued_from"])
    return chain

