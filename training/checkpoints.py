"""Atomic training checkpoints: written to ``step-N.tmp`` and renamed, so a checkpoint is complete or absent.

Layout: ``OUTPUT/checkpoints/step-00000100/`` holds accelerate's state (model as safetensors, optimizer,
RNG states; every file read back with ``weights_only=True``) and ``trainer_state.json`` (step, epoch, data
position, counters). ``OUTPUT/checkpoints/latest`` names the newest complete one. The learning-rate schedule
is a pure function of the step, so it is rebuilt rather than unpickled.
"""

from __future__ import annotations

import json
import os
import shutil

STATE_FILE = "trainer_state.json"
LATEST = "latest"


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(accelerator, output_dir: str, state: dict, keep: int) -> str:
    """Save accelerate's state plus ``state`` (a JSON-able dict with ``step``) atomically; prune old ones."""
    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"step-{state['step']:08d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_atomic(os.path.join(tmp, STATE_FILE), json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(os.path.join(root, LATEST), os.path.basename(final))
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first (unfinished ``.tmp`` folders are not checkpoints)."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith("step-") and not n.endswith(".tmp")]
    names = [n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE))]
    return [os.path.join(root, n) for n in sorted(names)]


def find_resume_point(output_dir: str, resume: str | bool) -> str | None:
    """``resume`` True: the latest complete checkpoint under ``output_dir`` (None if there is none yet);
    a path: that checkpoint, which must be complete."""
    if not resume:
        return None
    if resume is True:
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise ValueError(f"{resume} is not a complete SparseCut training checkpoint (no {STATE_FILE}).")
    return resume


def load_checkpoint(accelerator, path: str) -> dict:
    """Restore accelerate's state (model, optimizer, RNG) from ``path``; return the trainer state dict."""
    accelerator.load_state(path)
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def remove_unfinished(output_dir: str) -> None:
    """Delete ``.tmp`` leftovers of a run killed while writing a checkpoint."""
    root = checkpoint_root(output_dir)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.endswith(".tmp"):
                path = os.path.join(root, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
