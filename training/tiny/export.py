"""Write trained models in the zoo's compact family format (``sparsecut.zoo`` reads it; see its docstring).

``export_family(models, processor, out_dir)`` stores full members: the vision tower and tokenizer once under
``shared/``, each member's remaining weights. With ``base`` (a delta family over an installable base LLM), a member's
LLM weights are not stored: only its adapters, and its LoRA (``loras[name]``, a peft adapter folder) in the same
dtype; before writing, each member is rebuilt from the base + what would be stored and compared with the trained
model, so a member whose LLM changed outside its LoRA is refused instead of shipped wrong.

Exporting into a folder that already holds a family: when that family has the same base and a byte-equal stored
tower (members trained on its shipped tower, ``python -m training.tiny --tower``), its other members stay and the new
ones join them (a member of the same name is replaced); otherwise the family is replaced whole.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from sparsecut.zoo import LLM_PREFIXES, LORA_DIR, MANIFEST, VISION_PREFIX, assemble, folder_files, manifest
from .answers import drop_answers

PROCESSOR_FILE = "processor_config.json"
MEMBER_FILES = (PROCESSOR_FILE, "config.json", "model.safetensors", "generation_config.json")
DELTA_TOLERANCE = 1e-4  # max |rebuilt - trained| of an LLM weight (LoRA merged in fp32 on both sides)


def _member_processor(processor, config):
    """The family's processor with one member's view and token settings (high-res on/off, grid, fusion)."""
    from sparsecut.processing import SparseCutProcessor

    return SparseCutProcessor.from_model_config(
        config, processor.image_processor, processor.tokenizer, template=processor.template,
        pad_to_square=processor.pad_to_square, max_image_pixels=processor.max_image_pixels,
    )


def _check_delta(name: str, state: dict, kept: dict, base: dict, config_dir: str, lora: str | None) -> None:
    """Raise unless base + ``kept`` (what would be stored, tower included) + ``lora`` rebuilds member ``name``'s
    trained LLM weights ``state``."""
    rebuilt = assemble({k: v.float() for k, v in kept.items()}, base, config_dir, lora)
    for key, value in state.items():
        if key.startswith(LLM_PREFIXES) and key in rebuilt:
            gap = (rebuilt[key] - value.float()).abs().max().item()
            if gap > DELTA_TOLERANCE:
                raise ValueError(f"{name}'s {key} differs from its base + LoRA by {gap:.2e}: it was trained outside "
                                 "its LoRA (full LLM or embeddings), so it cannot ship as a delta; export it in full.")


def _write_lora(source: str, target: str, dtype: torch.dtype) -> None:
    os.makedirs(target, exist_ok=True)
    shutil.copy2(os.path.join(source, "adapter_config.json"), target)
    weights = load_file(os.path.join(source, "adapter_model.safetensors"))
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, os.path.join(target, "adapter_model.safetensors"),
              metadata={"format": "pt"})


def export_family(models: dict, processor, out_dir: str, dtype: torch.dtype = torch.float16, card: str | None = None,
                  base: dict | None = None, loras: dict[str, str] | None = None, sources: dict[str, str] | None = None,
                  tower_record: dict | None = None) -> list[str]:
    """Write ``models`` (name -> SparseCutForConditionalGeneration sharing one vision tower) and their processor in
    the family format, weights in ``dtype``. ``base`` ({"text": installed base name or causal-LM folder, "sha256"}):
    a delta family; ``loras`` name -> the member's peft LoRA folder (none: the member's LLM is the base's);
    ``sources`` name -> the trained model's folder (its config; needed with ``base``); ``tower_record``: how the
    tower was made (kept in the manifest; ``python -m training.tiny --tower`` reuses it). Members already in
    ``out_dir`` stay when that family has the same tower and base (module docstring). Returns the names of those
    that stayed. Raises if the members' vision towers differ, or a delta member's LLM is not its base + LoRA."""
    shared = os.path.join(out_dir, "shared")
    towers = {name: _stored_tower(model, dtype) for name, model in models.items()}
    vision = next(iter(towers.values()))
    for name, tower in towers.items():
        if not _same_tensors(vision, tower):
            raise ValueError(f"{name}'s vision tower differs from the others'; a family shares one tower.")
    joinable, previous = _joinable(out_dir, vision, base)
    staying = {name: path for name, path in joinable.items() if name not in models}
    for name, path in previous.items():  # a replaced family's members go with it, and their kept answers
        if name not in staying:
            shutil.rmtree(os.path.join(out_dir, path), ignore_errors=True)
            if name not in models:
                drop_answers(out_dir, name)
    if previous and not staying:  # and its shared files (stale ones would be assembled into every member)
        shutil.rmtree(shared, ignore_errors=True)
    os.makedirs(shared, exist_ok=True)
    save_file(vision, os.path.join(shared, "vision.safetensors"), metadata={"format": "pt"})
    for name, model in models.items():
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(VISION_PREFIX)}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        kept = {k: v for k, v in state.items() if base is None or not k.startswith(LLM_PREFIXES)}
        lora = (loras or {}).get(name)
        if base is not None:
            _check_delta(name, state, {**kept, **{VISION_PREFIX + k: v for k, v in towers[name].items()}}, base,
                         sources[name], lora)
        folder = os.path.join(out_dir, "models", name)
        shutil.rmtree(folder, ignore_errors=True)  # a re-export replaces the member whole (no stale LoRA)
        os.makedirs(folder)
        model.config.save_pretrained(folder)
        save_file({k: v.to(dtype) for k, v in kept.items()}, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        _member_processor(processor, model.config).save_pretrained(folder)
        for path in folder_files(folder):  # the tokenizer lives in shared/ only
            if os.path.basename(path) not in MEMBER_FILES:
                os.remove(path)
        if lora is not None:
            _write_lora(lora, os.path.join(folder, LORA_DIR), dtype)
    processor.save_pretrained(shared)
    os.remove(os.path.join(shared, PROCESSOR_FILE))
    shipped = {**staying, **{name: os.path.join("models", name) for name in models}}
    order = [name for name in joinable if name in shipped] + [name for name in shipped if name not in joinable]
    entry = {"models": {name: shipped[name] for name in order}, "shared": "shared", "dtype": str(dtype)}  # a re-exported member keeps its place
    if base is not None:
        entry["base"] = base
    if tower_record is not None:
        entry["tower"] = tower_record
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(entry, handle, indent=2)
    if card is not None:
        with open(os.path.join(out_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as handle:
            handle.write(card)
    return list(staying)


def _joinable(out_dir: str, tower: dict, base: dict | None) -> tuple[dict[str, str], dict[str, str]]:
    """(the members of the family in ``out_dir`` that new members on ``tower`` (name -> tensor, as stored) and
    ``base`` can join, or {} if none can; every member there): name -> folder relative to ``out_dir``."""
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        return {}, {}
    previous = manifest(out_dir)
    stored = os.path.join(out_dir, previous["shared"], "vision.safetensors")
    same = (previous.get("base") == base and os.path.isfile(stored) and _same_tensors(load_file(stored), tower))
    return (previous["models"] if same else {}), previous["models"]


def _stored_tower(model, dtype: torch.dtype) -> dict:
    """The vision tower's tensors of ``model`` as ``shared/vision.safetensors`` stores them (prefix dropped, ``dtype``)."""
    return {k[len(VISION_PREFIX):]: v.detach().contiguous().to(dtype) for k, v in model.state_dict().items()
            if k.startswith(VISION_PREFIX)}


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
