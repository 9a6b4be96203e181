"""Which models the app serves and how one is loaded: the embedded family by default, or checkpoints by path / hub id.

A model is named by a shipped name (``sparsecut.zoo``, e.g. ``sparsecut-tiny``), a local folder (a SparseCut
``save_pretrained`` folder or an HF LLaVA-1.5 folder) or a Hugging Face hub id (``llava-hf/llava-1.5-7b-hf``),
which is downloaded once (safetensors, configs and tokenizer files only: no pickles).
"""

from __future__ import annotations

import os

from sparsecut import zoo
from sparsecut.loading import checkpoint_kind

DEFAULT_MODEL, DEFAULT_BASELINE = "sparsecut-tiny", "llava-tiny"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # weights as safetensors only
USAGE = "python -m app --model PATH_OR_HUB_ID [--model ANOTHER ...] [--baseline PATH_OR_HUB_ID]"


class FamilyNotShipped(RuntimeError):
    """The embedded models are not in this checkout's assets."""


def default_family() -> tuple[list[str], str]:
    """(the embedded family's SparseCut members, ``sparsecut-tiny`` first; its LLaVA baseline)."""
    shipped = zoo.available()
    missing = [n for n in (DEFAULT_MODEL, DEFAULT_BASELINE) if n not in shipped]
    if missing:
        raise FamilyNotShipped(
            f"The embedded models ({', '.join(missing)}) are not shipped in this checkout yet (not found under "
            f"{zoo.assets_dir()}). Run the app with your own checkpoints instead:\n  {USAGE}\n"
            "--model takes a SparseCut save_pretrained folder or an HF LLaVA-1.5 folder or hub id; --baseline the "
            "LLaVA model to compare with."
        )
    family = shipped[DEFAULT_MODEL]
    members = [n for n, path in shipped.items() if path == family and n not in (DEFAULT_MODEL, DEFAULT_BASELINE)]
    return [DEFAULT_MODEL, *members], DEFAULT_BASELINE


def served_specs(models: list[str] | None, baseline: str | None) -> tuple[list[str], str | None]:
    """The (models, baseline) to serve, checked: ``models`` as given (and ``baseline``, none by default), or the
    embedded family with ``llava-tiny`` unless another ``baseline`` is given."""
    if models:
        return [check_spec(m) for m in models], baseline and check_spec(baseline)
    family, default = default_family()
    return family, check_spec(baseline) if baseline else default


def check_spec(spec: str) -> str:
    """``spec`` if it names a shipped model, a checkpoint folder or a hub id; a ValueError saying why not otherwise
    (``sparsecut.loading.checkpoint_kind``)."""
    checkpoint_kind(spec)
    return spec


def display_name(spec: str) -> str:
    """A short name for the UI: the shipped name or hub id, or a folder's base name."""
    return os.path.basename(os.path.normpath(spec)) if os.path.isdir(spec) else spec


def local_path(spec: str) -> str:
    """What ``sparsecut.evaluation.generation.load`` takes: a shipped name or folder as is, a hub id downloaded."""
    if checkpoint_kind(spec) != "hub":
        return spec
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=HUB_FILES)
    except Exception as err:  # not found, offline, gated: say which, and that it is not a local folder either
        raise FileNotFoundError(f"{spec!r} is not a local folder, and fetching it as a hub id failed: {err}") from err


def load_model(spec: str, device: str = "cpu", dtype: str = "auto"):
    """(model, processor) for ``spec``, in eval mode with eager attention (the LLM-attention view reads its weights;
    it is set once here, before the model is shared, never per request)."""
    from sparsecut.evaluation.generation import load

    model, processor = load(local_path(spec), device, dtype)
    model.set_attn_implementation("eager")
    return model, processor
