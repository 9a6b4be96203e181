"""Named checkpoints shipped in ``assets/``: ``from_pretrained("sparsecut-tiny")`` works through here.

A family is stored compactly: one ``family.json`` manifest, the parts every member shares (vision tower weights,
tokenizer, image processor) once under ``shared/``, and per member only its config and remaining weights
(fp16 safetensors). ``resolve(name)`` assembles a complete ``save_pretrained`` folder in a cache directory the
first time (keyed by the files' content, upcast to fp32 for CPU inference) and returns its path.

The assets folder is ``$SPARSECUT_ASSETS`` if set, else ``assets/`` beside the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "family.json"
PROCESSOR_FILE = "processor_config.json"
VISION_PREFIX = "model.vision_tower."


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


def _manifest(family_path: str) -> dict:
    with open(os.path.join(family_path, MANIFEST), encoding="utf-8") as handle:
        return json.load(handle)


def available() -> dict[str, str]:
    """model name -> family folder, for every shipped model."""
    names = {}
    for path in families().values():
        for name in _manifest(path)["models"]:
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


def _files(folder: str) -> list[str]:
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))]


def resolve(name: str) -> str:
    """A complete ``save_pretrained`` folder for shipped model ``name`` (assembled once, then cached)."""
    known = available()
    if name not in known:
        raise ValueError(f"Unknown model {name!r}; shipped models: {', '.join(sorted(known)) or 'none (assets/ is empty)'}.")
    family = known[name]
    manifest = _manifest(family)
    member = os.path.join(family, manifest["models"][name])
    shared = os.path.join(family, manifest["shared"])
    sources = _files(shared) + _files(member)  # member files last: its processor_config.json wins
    target = os.path.join(cache_dir(), f"{name}-{_digest(sources)}")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for path in sources:
        if not path.endswith(".safetensors"):
            shutil.copy2(path, tmp)
    weights = load_file(os.path.join(member, "model.safetensors"))
    weights.update({VISION_PREFIX + k: v for k, v in load_file(os.path.join(shared, "vision.safetensors")).items()})
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}  # fp32: fast and exact on CPUs
    save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _member_processor(processor, config):
    """The family's processor with one member's view and token settings (high-res on/off, grid, fusion)."""
    from .processing import SparseCutProcessor

    return SparseCutProcessor.from_model_config(
        config, processor.image_processor, processor.tokenizer, template=processor.template,
        pad_to_square=processor.pad_to_square, max_image_pixels=processor.max_image_pixels,
    )


def export_family(models: dict, processor, out_dir: str, dtype: torch.dtype = torch.float16, card: str | None = None) -> None:
    """Write ``models`` (name -> SparseCutForConditionalGeneration sharing one vision tower) and their processor in
    the compact family format. Raises if the members' vision towers differ."""
    shared = os.path.join(out_dir, "shared")
    os.makedirs(shared, exist_ok=True)
    vision = None
    for name, model in models.items():
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        tower = {k[len(VISION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(VISION_PREFIX)}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        if vision is None:
            vision = tower
            save_file(vision, os.path.join(shared, "vision.safetensors"), metadata={"format": "pt"})
        elif any(not torch.equal(vision[k], tower[k]) for k in vision):
            raise ValueError(f"{name}'s vision tower differs from the others'; a family shares one tower.")
        folder = os.path.join(out_dir, "models", name)
        os.makedirs(folder, exist_ok=True)
        model.config.save_pretrained(folder)
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        _member_processor(processor, model.config).save_pretrained(folder)
        for path in _files(folder):  # the tokenizer lives in shared/ only
            if os.path.basename(path) not in (PROCESSOR_FILE, "config.json", "model.safetensors", "generation_config.json"):
                os.remove(path)
    processor.save_pretrained(shared)
    os.remove(os.path.join(shared, PROCESSOR_FILE))
    manifest = {"models": {name: os.path.join("models", name) for name in models}, "shared": "shared", "dtype": str(dtype)}
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    if card is not None:
        with open(os.path.join(out_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as handle:
            handle.write(card)
