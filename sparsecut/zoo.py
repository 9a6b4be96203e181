"""Named checkpoints shipped in ``assets/``: ``from_pretrained("sparsecut-tiny")`` works through here.

A family is stored compactly: one ``family.json`` manifest, the parts every member shares (vision tower weights,
tokenizer, image processor) once under ``shared/``, and per member its config, processor settings and own weights
(fp16/bf16 safetensors). A family trained on an installable base LLM (``sparsecut.base_models``) ships as deltas:
the manifest names the base (``"base": {"text": name, "sha256": ...}``), a member's weights hold only what is not
the base LLM (adapters / projector), and its ``lora/`` folder (peft's format) the low-rank change of the LLM.
``resolve(name)`` assembles a complete fp32 ``save_pretrained`` folder in a cache directory the first time (base
LLM + tower + member weights, LoRA merged; keyed by the files' content) and returns its path.

The assets folder is ``$SPARSECUT_ASSETS`` if set, else ``assets/`` beside the package. Writing a family is the
shipping code's job (``training/tiny/ship.py``); this module only reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "family.json"
VISION_PREFIX = "model.vision_tower."  # the tower's keys in a SparseCut state dict
LLM_PREFIXES = ("model.language_model.", "lm_head.")  # the LLM's keys (what a delta family takes from its base)
LORA_DIR = "lora"  # a delta member's LoRA, in peft's adapter format


def assets_dir() -> str:
    return os.environ.get("SPARSECUT_ASSETS") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def cache_dir() -> str:
    return os.environ.get("SPARSECUT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparsecut")


def families() -> dict[str, str]:
    """family folder name -> path, for every folder in the assets directory with a manifest."""
    root = assets_dir()
    if not os.path.isdir(root):
        return {}
    return {n: os.path.join(root, n) for n in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, n, MANIFEST))}


def manifest(family_path: str) -> dict:
    """The family manifest (``family.json``) of the family folder ``family_path``."""
    with open(os.path.join(family_path, MANIFEST), encoding="utf-8") as handle:
        return json.load(handle)


def available() -> dict[str, str]:
    """model name -> family folder, for every shipped model."""
    names = {}
    for path in families().values():
        for name in manifest(path)["models"]:
            names[name] = path
    return names


def is_known(name) -> bool:
    return isinstance(name, str) and not os.path.isdir(name) and name in available()


def _digest(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def folder_files(folder: str) -> list[str]:
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))]


def _member_files(name: str) -> tuple[dict, str, str, str]:
    """(family manifest, member folder, shared folder, the member's LoRA folder, which may be absent) of ``name``."""
    known = available()
    if name not in known:
        raise ValueError(f"Unknown model {name!r}; shipped models: {', '.join(sorted(known)) or 'none (assets/ is empty)'}.")
    family = known[name]
    entry = manifest(family)
    member = os.path.join(family, entry["models"][name])
    return entry, member, os.path.join(family, entry["shared"]), os.path.join(member, LORA_DIR)


def content_key(name: str) -> str:
    """``<name>-<digest>``: shipped model ``name`` identified by the content of its files, its family's shared ones and
    its base (what its cached folder is named by; another key means other weights)."""
    entry, member, shared, lora = _member_files(name)
    sources = folder_files(shared) + folder_files(member) + (folder_files(lora) if os.path.isdir(lora) else [])
    base = entry.get("base")
    key = _digest(sources) if base is None else hashlib.sha256((_digest(sources) + json.dumps(base)).encode()).hexdigest()[:16]
    return f"{name}-{key}"


def resolve(name: str) -> str:
    """A complete ``save_pretrained`` folder for shipped model ``name`` (assembled once, then cached)."""
    target = os.path.join(cache_dir(), content_key(name))
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    write_member(name, target)
    return target


def write_member(name: str, folder: str, merge_lora: bool = True) -> None:
    """Shipped model ``name`` as a ``save_pretrained`` folder (fp32) at ``folder`` (replaced; written beside it and
    renamed at the end, so an interruption never leaves a partial one): its LoRA merged into the LLM, or with
    ``merge_lora=False`` the base LLM as it is and the LoRA (fp32) in ``folder/lora``, e.g. to continue training it
    (``python -m training.tiny --continue-from``)."""
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_member(name, tmp, merge_lora)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _write_member(name: str, folder: str, merge_lora: bool) -> None:
    entry, member, shared, lora = _member_files(name)
    has_lora = os.path.isdir(lora)
    os.makedirs(folder)
    for path in folder_files(shared) + folder_files(member):  # member files last: its processor_config.json wins
        if not path.endswith(".safetensors"):
            shutil.copy2(path, folder)
    weights = load_file(os.path.join(member, "model.safetensors"))
    weights.update({VISION_PREFIX + k: v for k, v in load_file(os.path.join(shared, "vision.safetensors")).items()})
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}  # fp32: fast and exact on CPUs
    base = entry.get("base")
    if base is not None:
        weights = assemble(weights, base, folder, lora if has_lora and merge_lora else None)
    save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    if has_lora and not merge_lora:
        os.makedirs(os.path.join(folder, LORA_DIR))
        shutil.copy2(os.path.join(lora, "adapter_config.json"), os.path.join(folder, LORA_DIR))
        delta = {k: v.float() for k, v in load_file(os.path.join(lora, "adapter_model.safetensors")).items()}
        save_file(delta, os.path.join(folder, LORA_DIR, "adapter_model.safetensors"), metadata={"format": "pt"})


def base_weights(text: str, vocab_size: int) -> dict[str, torch.Tensor]:
    """The LLM weights of base ``text`` (an installed base model's name or a causal-LM folder) under a SparseCut
    model's keys, fp32, its embeddings grown to ``vocab_size`` rows as ``from_backbones`` grows them."""
    from transformers import AutoModelForCausalLM

    from .base_models import resolve_text_backbone
    from .convert import grow_embeddings

    lm = AutoModelForCausalLM.from_pretrained(resolve_text_backbone(text), dtype=torch.float32)
    grow_embeddings(lm, vocab_size)
    state = {"model.language_model." + k: v for k, v in lm.get_decoder().state_dict().items()}
    if not lm.config.tie_word_embeddings:
        state["lm_head.weight"] = lm.get_output_embeddings().weight.detach()
    return state


def check_base(base: dict) -> None:
    """Raise if the installed base model is not the one a delta family was trained on (``base``: its manifest entry)."""
    from .base_models import BASE_MODELS

    spec = BASE_MODELS.get(base["text"])
    if spec is not None and spec.sha256 != base["sha256"]:
        raise ValueError(f"This family was trained on {base['text']} with sha256 {base['sha256']}, but this version of "
                         f"SparseCut installs {spec.sha256}; use the SparseCut version the family came with, or retrain "
                         "it (python -m training.tiny).")


def assemble(weights: dict, base: dict, folder: str, lora: str | None) -> dict:
    """A delta member's weights (name -> fp32 tensor, SparseCut keys, no LLM ones) completed with its base LLM's
    (``base``: the manifest's entry) and its LoRA (``lora``: a peft adapter folder, or None) merged into them;
    ``folder`` holds the member's config.json."""
    from .config import SparseCutConfig
    from .model import SparseCutForConditionalGeneration

    check_base(base)
    config = SparseCutConfig.from_pretrained(folder)
    weights = {**base_weights(base["text"], config.text_config.vocab_size), **weights}
    if lora is None:
        return weights
    from peft import PeftModel

    model = SparseCutForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: the member's weights and its base do not make a whole model (missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}).")
    merged = PeftModel.from_pretrained(model, lora).merge_and_unload()
    return {k: v.detach().contiguous() for k, v in merged.state_dict().items() if k not in tied}
