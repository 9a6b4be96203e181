"""The plain loop both tiny backbones are pretrained with: AdamW, warm-up + cosine, gradient clipping at 1."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from training.trainer import adamw


def fit(model: torch.nn.Module, step_loss: Callable[[torch.Generator], torch.Tensor], steps: int, lr: float, seed: int,
        weight_decay: float, betas: tuple[float, float], warmup_ratio: float, desc: str, progress: bool,
        param_groups: list[dict] | None = None, after_step: Callable[[int], None] | None = None) -> list[float]:
    """Run ``steps`` optimizer steps of ``step_loss(generator)`` (which draws its own batch); return the losses.
    ``param_groups`` (AdamW groups, each may set its own ``lr``) replace "all parameters at ``lr``";
    ``after_step(step)`` is called after each step (1-based), e.g. to evaluate (it may switch to eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(param_groups or list(model.parameters()), lr=lr, weight_decay=weight_decay, betas=betas)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, math.ceil(warmup_ratio * steps)), steps)
    losses = []
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress):
        model.train()
        loss = step_loss(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(step)
    model.eval()
    return losses
