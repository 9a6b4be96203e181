"""The training loop on accelerate: freezing, optimizer, schedule, accumulation, checkpoints, logs, NaN guard.

Loss normalisation: each optimizer step's loss is the sum of token losses over the whole global batch (all
micro-batches, all processes) divided by its number of supervised tokens, so the gradient does not depend on
how the global batch is split across devices and accumulation steps.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from sparsecut.precision import cpu_supports_bf16

from .checkpoints import complete_checkpoints, find_resume_point, load_checkpoint, remove_unfinished, save_checkpoint
from .data import IGNORE_INDEX, Collator, EpochOrder, supervised_positions
from .recipes import LORA_MODULES, Recipe


LORA_DIR = "lora"  # where save_model also writes an unmerged LoRA


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped before applying that update."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    windows_in_epoch: int = 0  # optimizer steps done in the current epoch
    samples: int = 0  # samples consumed (before skips), all processes
    tokens: int = 0  # non-padding tokens trained on, all processes
    skipped: int = 0  # samples dropped at load time (undecodable image)


def module_of(name: str) -> str:
    """Top-level part a parameter belongs to: adapters, reading_adapter (its queries, attentions and MLP),
    vision_tower (the reading adapter's own tower too, ``config.reading_tower``), or language_model (LLM + head)."""
    for part, module in (("vision_tower", "vision_tower"), ("reading_adapter", "reading_adapter"), ("adapters", "adapters")):
        if f".{part}." in f".{name}":
            return module
    return "language_model"


def apply_freezing(model, recipe: Recipe) -> None:
    """requires_grad on the recipe's modules only (freezing lives here, never in forward); "adapters" trains the
    reading adapter too."""
    trained = set(recipe.train_modules) | ({"reading_adapter"} if "adapters" in recipe.train_modules else set())
    for name, param in model.named_parameters():
        param.requires_grad = module_of(name) in trained or "lora_" in name


def parameter_counts(model) -> dict[str, tuple[int, int]]:
    """module -> (trainable, total) parameter counts (tied weights counted once)."""
    counts: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        entry = counts.setdefault(module_of(name), [0, 0])
        entry[1] += param.numel()
        entry[0] += param.numel() if param.requires_grad else 0
    return {k: (v[0], v[1]) for k, v in counts.items()}


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel where every parameter's device has one (CPU and CUDA): one pass over each
    tensor instead of a dozen (measured on 2 CPU cores for SmolLM2's 135M parameters: 0.06 s a step vs 0.59 s)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def _param_groups(model, recipe: Recipe) -> list[dict]:
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = module_of(name)
        lr = recipe.learning_rate
        if part in ("adapters", "reading_adapter") and recipe.adapter_learning_rate is not None:
            lr = recipe.adapter_learning_rate
        if part == "vision_tower" and recipe.vision_learning_rate is not None:
            lr = recipe.vision_learning_rate
        decay = recipe.weight_decay if param.dim() >= 2 else 0.0  # no decay on biases, norms, gates
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


class Trainer:
    """Runs one recipe on one dataset. ``log`` receives human-readable lines (the plan, warnings, the end)."""

    def __init__(self, model, processor, dataset, recipe: Recipe, output_dir: str, resume=False, log=print, cpu=False):
        self.recipe, self.output_dir, self.log = recipe, output_dir, log
        self.dataset, self.processor = dataset, processor
        processes = PartialState(cpu=cpu).num_processes  # known before the Accelerator, which needs the accumulation
        per_step = recipe.per_device_batch_size * processes
        if recipe.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {recipe.global_batch_size} is not a multiple of per_device_batch_size "
                f"{recipe.per_device_batch_size} x {processes} process(es); change one of them."
            )
        self.accumulation = recipe.global_batch_size // per_step
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=recipe.mixed_precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=self.accumulation, sync_with_dataloader=False),
        )
        if recipe.mixed_precision == "bf16" and self.accelerator.device.type == "cpu" and not cpu_supports_bf16():
            log("Warning: this CPU has no native bf16 (AVX-512 bf16 / AMX); bf16 autocast is emulated and slower here. "
                "Use --mixed-precision no.")
        set_seed(recipe.seed)
        self.steps_per_epoch = len(dataset) // recipe.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} usable samples are fewer than one global batch ({recipe.global_batch_size}); "
                "lower --global-batch-size or add data."
            )
        total = math.ceil(recipe.epochs * self.steps_per_epoch)
        self.total_steps = min(total, recipe.max_steps) if recipe.max_steps else total
        self.warmup_steps = math.ceil(recipe.warmup_ratio * self.total_steps)

        if recipe.lora:
            model = add_lora(model, recipe.lora)
        apply_freezing(model, recipe)
        if recipe.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.counts = parameter_counts(model)
        optimizer = adamw(_param_groups(model, recipe), betas=(0.9, 0.999), eps=1e-8)
        self.order = EpochOrder(
            dataset.report.lengths, dataset.report.multimodal, recipe.seed, recipe.group_by_modality_length,
            megabatch=50 * recipe.global_batch_size,
        )
        loader = DataLoader(
            dataset,
            batch_size=recipe.per_device_batch_size,
            sampler=self.order,
            collate_fn=Collator(processor.tokenizer.pad_token_id),
            num_workers=recipe.num_workers,
            drop_last=True,
        )
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.scheduler = get_scheduler(  # before any resume: it records each group's base lr as initial_lr
            "constant_with_warmup" if recipe.lr_schedule == "constant" else recipe.lr_schedule,
            self.optimizer.optimizer, num_warmup_steps=self.warmup_steps, num_training_steps=self.total_steps,
        )
        self.state = TrainState()
        if self.accelerator.is_main_process:
            remove_unfinished(output_dir)
        self.accelerator.wait_for_everyone()
        start = find_resume_point(output_dir, resume)
        if start:
            self.state = TrainState(**load_checkpoint(self.accelerator, start))
            self.log(f"Resumed from {start} at step {self.state.step} (epoch {self.state.epoch}).")
        elif resume:
            self.log(f"No checkpoint under {output_dir} yet; starting from the beginning.")
        with warnings.catch_warnings():  # replaying a schedule without optimizer steps is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.state.step):  # the schedule is a function of the step: replay it instead of unpickling
                self.scheduler.step()

    # ---- reporting ----------------------------------------------------------------------------------------------

    def plan(self) -> str:
        r, a = self.recipe, self.accelerator
        config = a.unwrap_model(self.model).config
        rows = [
            "SparseCut training plan",
            f"  recipe        {r.description}",
            f"  model         pattern {config.pattern} ({len(config.shortcuts)} shortcuts), high-res "
            + (f"{config.high_res_grid}x{config.high_res_grid} {config.high_res_fusion}" if config.high_res else "off"),
            f"  data          {self.dataset.report.summary()}; template {self.dataset.template}",
        ]
        for part, (trainable, total) in sorted(self.counts.items()):
            rows.append(f"  {part:<13} {trainable:>14,} trainable of {total:>14,}" + ("" if trainable else "  (frozen)"))
        rows += [
            f"  global batch  {r.global_batch_size} = {r.per_device_batch_size} per device x {self.accumulation} "
            f"accumulation x {a.num_processes} process(es)",
            f"  steps         {self.total_steps} ({self.steps_per_epoch} per epoch, {r.epochs:g} epoch(s)"
            + (f", capped by max_steps {r.max_steps})" if r.max_steps and r.max_steps < r.epochs * self.steps_per_epoch else ")"),
            f"  schedule      {r.lr_schedule}, lr {r.learning_rate:g}, warm-up {self.warmup_steps} steps "
            f"({r.warmup_ratio:.0%}), weight decay {r.weight_decay:g}, grad clip {r.max_grad_norm:g}",
            f"  precision     {r.mixed_precision}; gradient checkpointing {'on' if r.gradient_checkpointing else 'off'}"
            f"; distributed {a.distributed_type.value}",
            f"  output        {self.output_dir} (checkpoints every {r.save_every} steps, keep {r.keep_checkpoints})",
        ]
        return "\n".join(rows)

    # ---- the loop -----------------------------------------------------------------------------------------------

    def _window(self, iterator) -> list[dict]:
        return [next(iterator) for _ in range(self.accumulation)]

    def _micro_loss(self, batch: dict, global_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backprop, summed token loss for logging) of one micro-batch."""
        if "input_ids" not in batch:  # every sample's image failed: a zero loss keeps processes in step
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return zero, zero.detach()
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        keep, targets = supervised_positions(batch["labels"])
        logits = self.model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (N, V): the head only where needed
        token_loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        scale = self.accelerator.num_processes * self.accumulation  # undo DDP's mean and accelerate's 1/accumulation
        return token_loss / global_tokens * scale, token_loss.detach()

    def train(self) -> dict:
        a, r, state = self.accelerator, self.recipe, self.state
        metrics_path = os.path.join(self.output_dir, "metrics.jsonl")
        writer = _tensorboard(os.path.join(self.output_dir, "tensorboard")) if a.is_main_process else None
        progress = _progress(self.total_steps, state.step, a.is_main_process)
        global_batch = r.global_batch_size
        last_loss = float("nan")
        while state.step < self.total_steps:
            self.order.set_position(state.epoch, state.windows_in_epoch * global_batch)
            iterator = iter(self.loader)
            while state.windows_in_epoch < self.steps_per_epoch and state.step < self.total_steps:
                started = time.perf_counter()
                last_loss, grad_norm, tokens, skipped = self._step(self._window(iterator))
                elapsed = time.perf_counter() - started
                state.step += 1
                state.windows_in_epoch += 1
                state.samples += global_batch
                state.tokens += tokens
                state.skipped += skipped
                record = {
                    "step": state.step,
                    "epoch": state.epoch + state.windows_in_epoch / self.steps_per_epoch,
                    "loss": last_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens / elapsed,
                    "samples": state.samples,
                    "skipped": state.skipped,
                    "time": time.time(),  # wall clock (s since the epoch): progress and ETA from outside the run
                }
                if a.is_main_process:
                    _log_metrics(metrics_path, writer, record, state.step % r.log_every == 0 or state.step == 1)
                    progress.update(1)
                    progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                if state.step % r.save_every == 0 and state.step < self.total_steps:
                    save_checkpoint(a, self.output_dir, asdict(state), r.keep_checkpoints)
            if state.windows_in_epoch >= self.steps_per_epoch:
                state.epoch += 1
                state.windows_in_epoch = 0
        progress.close()
        save_checkpoint(a, self.output_dir, asdict(state), r.keep_checkpoints)
        if writer is not None:
            writer.close()
        if state.skipped:
            self.log(f"Warning: {state.skipped} sample(s) skipped during training because their image could not be decoded.")
        return {"final_loss": last_loss, **asdict(state)}

    def _step(self, window: list[dict]) -> tuple[float, float | None, int, int]:
        """One optimizer step on one global batch (``window``: this process's micro-batches of it): (loss per
        supervised token over the whole global batch, gradient norm before clipping or None, non-padding tokens,
        skipped samples), summed over all processes. Raises ``TrainingDiverged`` before applying a NaN/inf update."""
        a = self.accelerator
        counts = torch.tensor(
            [
                sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window if "labels" in b),
                sum(int(b["attention_mask"].sum()) for b in window if "attention_mask" in b),
                sum(b["skipped"] for b in window),
            ],
            device=a.device,
        )
        supervised, tokens, skipped = a.reduce(counts, reduction="sum").tolist()
        global_tokens = torch.tensor(float(max(supervised, 1)), device=a.device)
        loss_sum = torch.zeros((), device=a.device)
        grad_norm = None
        for batch in window:
            with a.accumulate(self.model):
                loss, token_loss = self._micro_loss(batch, global_tokens)
                # NaN/inf propagates to the check at the synchronising micro-batch, on every process
                loss_sum = token_loss if not torch.isfinite(token_loss) else loss_sum + token_loss
                a.backward(loss)
                if a.sync_gradients:
                    grad_norm = self._checked_grad_norm(loss_sum)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        loss = float(a.reduce(loss_sum, reduction="sum")) / max(supervised, 1)
        return loss, None if grad_norm is None else float(grad_norm), int(tokens), int(skipped)

    def _checked_grad_norm(self, loss_sum: torch.Tensor):
        """Before the update: stop if any process saw a NaN/inf loss; else clip (recipe ``max_grad_norm``) and return
        the norm before clipping (None without clipping)."""
        a = self.accelerator
        if a.reduce((~torch.isfinite(loss_sum)).float(), reduction="sum").item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self._diverged_message(self.state))
        if not self.recipe.max_grad_norm:
            return None
        return a.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.recipe.max_grad_norm)

    def _diverged_message(self, state: TrainState) -> str:
        saved = complete_checkpoints(self.output_dir)
        where = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
        return (
            f"The loss became NaN/inf at step {state.step + 1} (epoch {state.epoch}); training stopped without applying "
            f"that update, and {where}. Resume with --resume and a lower --learning-rate, or fp32/bf16 instead of fp16."
        )

    def save_model(self) -> None:
        """The final ``save_pretrained`` folder (safetensors + processor) in the output directory; with LoRA, the
        LoRA merged into the LLM there, and also unmerged in ``LORA_DIR`` (peft's adapter format: a small delta)."""
        a = self.accelerator
        a.wait_for_everyone()
        model = a.unwrap_model(self.model)
        state_dict = a.get_state_dict(self.model)
        if self.recipe.lora:
            if a.is_main_process:
                model.save_pretrained(os.path.join(self.output_dir, LORA_DIR), safe_serialization=True)
            model = model.merge_and_unload()
            state_dict = None if not a.is_main_process else model.state_dict()
        if a.is_main_process:
            model.save_pretrained(self.output_dir, state_dict=state_dict, safe_serialization=True)
            self.processor.save_pretrained(self.output_dir)
        a.wait_for_everyone()


def add_lora(model, lora: dict):
    """``model`` wrapped by peft with a LoRA (``lora``: r, alpha, dropout, modules, init) on the projections of its
    LLM's decoder layers (``language_model.layers.N`` in a SparseCut model, ``language_model.model.layers.N`` where
    the LLM is a whole causal LM): ``modules`` ``"all"`` (default: every attention and MLP projection) or
    ``"attention"`` (q, k, v, o only). ``init``: a saved LoRA (peft adapter folder, e.g. a stage-2 output's ``lora/``)
    whose weights the LoRA starts from, to continue its training; it must have the same r, alpha and projections
    (ValueError naming the differences). peft freezes everything else: re-apply the recipe's freezing after."""
    from peft import LoraConfig, PeftModel, get_peft_model

    modules = lora.get("modules", "all")
    if modules not in LORA_MODULES:
        raise ValueError(f"LoRA modules must be one of {', '.join(LORA_MODULES)}; got {modules!r}.")
    config = LoraConfig(
        r=int(lora.get("r", 128)),
        lora_alpha=int(lora.get("alpha", 256)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=rf".*language_model\.(model\.)?layers\.\d+\.({LORA_MODULES[modules]})",
    )
    if not lora.get("init"):
        return get_peft_model(model, config)
    saved = saved_lora_config(lora["init"])
    wrong = [f"{key} {saved[key]!r} (asked: {value!r})" for key, value in
             (("r", config.r), ("lora_alpha", config.lora_alpha), ("target_modules", config.target_modules))
             if saved.get(key) != value]
    if wrong:
        raise ValueError(f"The LoRA in {lora['init']} has {', '.join(wrong)}: it cannot be continued with these "
                         "settings; ask for its own r, alpha and modules.")
    return PeftModel.from_pretrained(model, lora["init"], is_trainable=True, config=config)  # its weights, this dropout


def saved_lora_config(folder: str) -> dict:
    """The ``adapter_config.json`` of a saved peft LoRA folder; ValueError if the folder holds none."""
    path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
        raise ValueError(f"{folder} is not a saved LoRA (peft's adapter_config.json + adapter_model.safetensors); "
                         "give the lora/ folder of a LoRA stage-2 output or of a shipped member.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _tensorboard(path: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(path)


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="training", unit="step", disable=not enabled, dynamic_ncols=True)


def _log_metrics(path: str, writer, record: dict, to_board: bool) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    if writer is not None and to_board:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            if record[key] is not None:
                writer.add_scalar(f"train/{key}", record[key], record["step"])
