"""LLaVA-format training data: records -> (input_ids, labels, image views), with a bad-data policy.

A record is LLaVA's JSON: ``{"id", "image" (path under --images; optional in stage 2), "conversations":
[{"from": "human" | "gpt" | "system", "value": "...<image>..."}]}``. Only assistant replies are supervised.

Labels come from the full prompt's own tokenisation: every token whose character span starts inside an
assistant reply is supervised. Each sample is then checked: its supervised tokens must decode to exactly the
replies. That catches the "tokenization mismatch -> loss 0" failure of LLaVA codebases at load time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sparsecut.images import ImageLoadError, load_image
from sparsecut.templates import render_segments

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadSample(ValueError):
    """A sample the bad-data policy skips (or, with --strict, stops on). ``reason`` is the counted category."""

    def __init__(self, sample_id, reason: str, detail: str):
        self.sample_id, self.reason = sample_id, reason
        super().__init__(f"sample {sample_id!r}: {detail}")


def read_records(path: str) -> list[dict]:
    """A LLaVA JSON list, or JSON Lines (one record per line)."""
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in handle if line.strip()]
        else:
            records = json.load(handle)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records, got {type(records).__name__}.")
    return records


def _images_of(record) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def _messages(record, sample_id) -> list[dict]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadSample(sample_id, "malformed", "has no 'conversations' list")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from") if isinstance(turn, dict) else None)
        if role is None or not isinstance(turn.get("value"), str):
            raise BadSample(sample_id, "malformed", f"has a turn that is not a human/gpt/system message: {turn!r}")
        messages.append({"role": role, "content": turn["value"]})
    return messages


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode(record, processor, template: str, max_length: int, high_res: bool, sample_id=None) -> Encoded:
    """Tokenise one record with labels on assistant replies; raise ``BadSample`` for any policy violation."""
    sample_id = record.get("id", sample_id)
    messages = _messages(record, sample_id)
    images = _images_of(record)
    token = processor.image_token
    placeholders = sum(m["content"].count(token) for m in messages)
    if images and placeholders == 0:
        raise BadSample(sample_id, "image_without_placeholder", f"has an image but no {token} in its text")
    if placeholders != len(images):
        raise BadSample(
            sample_id, "placeholder_count", f"has {placeholders} {token} placeholder(s) but {len(images)} image(s)"
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadSample(sample_id, "no_reply", "has no assistant reply to learn from")
    per_image = processor.tokens_per_image(high_res)
    segments = render_segments(messages, template, processor.tokenizer, add_generation_prompt=False, image_token=token)
    text, spans = "", []
    for piece, supervised in segments:
        piece = piece.replace(token, token * per_image)
        if supervised:
            spans.append((len(text), len(text) + len(piece)))
        text += piece
    enc = processor.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) > max_length:
        raise BadSample(sample_id, "too_long", f"is {len(ids)} tokens, longer than the context ({max_length})")
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, end) in enumerate(offsets):
        if end > start and any(a <= start < b for a, b in spans):
            labels[k] = ids[k]
    _check_alignment(ids, labels, [text[a:b] for a, b in spans], processor.tokenizer, sample_id)
    return Encoded(ids, labels)


def _check_alignment(ids, labels, replies: list[str], tokenizer, sample_id) -> None:
    """The supervised tokens must decode to exactly the replies (whitespace-normalised)."""
    supervised = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    got = " ".join(tokenizer.decode(supervised, skip_special_tokens=False).split())
    want = " ".join("".join(replies).split())
    if got.replace(" ", "") != want.replace(" ", ""):
        raise BadSample(
            sample_id,
            "tokenization_mismatch",
            f"tokenization mismatch: supervised tokens decode to {got[:80]!r}, the replies are {want[:80]!r}; "
            "the template and tokenizer disagree (wrong --template, or a tokenizer that merges across turns)",
        )


@dataclass
class ValidationReport:
    kept: list[int] = field(default_factory=list)  # record indices that passed
    lengths: list[int] = field(default_factory=list)  # their token counts
    multimodal: list[bool] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict = field(default_factory=dict)  # reason -> first message

    def summary(self) -> str:
        if not self.skipped:
            return f"{len(self.kept)} samples, none skipped"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        return f"{len(self.kept)} samples kept, {sum(self.skipped.values())} skipped ({reasons})"


class LlavaDataset(Dataset):
    """Validated LLaVA records; ``dataset[k]`` is a dict with ``input_ids``, ``labels`` and ``pixel_values`` (or None
    when its image cannot be decoded under the skip policy: the collator drops it and counts it)."""

    def __init__(self, records, processor, image_root: str | None, template: str, max_length: int, high_res: bool, strict: bool = False):
        self.records, self.processor, self.image_root = records, processor, image_root or ""
        self.template, self.max_length, self.high_res, self.strict = template, max_length, high_res, strict
        self.report = ValidationReport()

    def _path(self, name: str) -> str:
        return name if os.path.isabs(name) else os.path.join(self.image_root, name)

    def validate(self, decode_images: bool = False) -> ValidationReport:
        """Check every record (text, tokenisation, image files). ``decode_images`` fully decodes every image (--dry-run)."""
        report = ValidationReport()
        for index, record in enumerate(self.records):
            try:
                encoded = encode(record, self.processor, self.template, self.max_length, self.high_res, sample_id=index)
                for name in _images_of(record):
                    self._check_image(record.get("id", index), name, decode_images)
            except BadSample as bad:
                if self.strict:
                    raise
                report.skipped[bad.reason] += 1
                report.examples.setdefault(bad.reason, str(bad))
                continue
            report.kept.append(index)
            report.lengths.append(len(encoded.input_ids))
            report.multimodal.append(bool(_images_of(record)))
        self.report = report
        return report

    def _check_image(self, sample_id, name: str, decode: bool) -> None:
        path = self._path(name)
        if not os.path.isfile(path):
            raise BadSample(sample_id, "missing_image", f"image {path} does not exist")
        if decode:
            try:
                load_image(path, self.processor.max_image_pixels)
            except ImageLoadError as err:
                raise BadSample(sample_id, "corrupt_image", str(err)) from err

    def __len__(self) -> int:
        return len(self.report.kept)

    def __getitem__(self, k: int):
        index = self.report.kept[k]
        record = self.records[index]
        encoded = encode(record, self.processor, self.template, self.max_length, self.high_res, sample_id=index)
        try:
            views = [self.processor.image_views(self._path(name), self.high_res) for name in _images_of(record)]
        except ImageLoadError as err:
            if self.strict:
                raise BadSample(record.get("id", index), "corrupt_image", str(err)) from err
            return None
        return {
            "input_ids": torch.tensor(encoded.input_ids),
            "labels": torch.tensor(encoded.labels),
            "pixel_values": torch.stack(views) if views else None,  # (images, N, 3, S, S)
        }


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (B, T) -> (keep (B, T) bool: positions whose next token is supervised, targets (N,): those next tokens,
    row-major). The LM head is needed only at ``keep``; its N rows of logits go with ``targets`` one to one."""
    following = labels[:, 1:]  # (B, T - 1): position t predicts token t + 1
    keep = F.pad(following != IGNORE_INDEX, (0, 1), value=False)  # (B, T)
    return keep, following[following != IGNORE_INDEX]


class Collator:
    """Right-pads a micro-batch; drops samples whose image failed to decode and reports how many."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items):
        kept = [item for item in items if item is not None]
        if not kept:
            return {"skipped": len(items)}
        length = max(len(item["input_ids"]) for item in kept)
        batch = len(kept)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, item in enumerate(kept):
            n = len(item["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = item["input_ids"], item["labels"], 1
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "skipped": len(items) - batch}
        views = [item["pixel_values"] for item in kept if item["pixel_values"] is not None]
        if views:
            out["pixel_values"] = torch.cat(views)  # (images, N, 3, S, S), in order of appearance
        return out


def collate_records(records, processor, image_root: str, template: str, high_res: bool, max_length: int = 4096) -> dict:
    """``records`` validated, encoded and collated into one batch exactly as the training CLI reads them (labels
    included, the skip count dropped): what the benchmarks and the precision probe time."""
    dataset = LlavaDataset(records, processor, image_root, template, max_length, high_res)
    dataset.validate()
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[k] for k in range(len(dataset))])
    batch.pop("skipped")
    return batch


class EpochOrder(torch.utils.data.Sampler):
    """Deterministic sample order for an epoch, resumable from any position.

    Shuffled with ``seed + epoch``; with ``group_by_modality_length``, megabatches (50 global batches) are sorted
    by modality then length, as LLaVA's ``group_by_modality_length``, so padding is small and batches are rarely
    mixed. ``start`` skips the first samples (resume)."""

    def __init__(self, lengths, multimodal, seed: int, group: bool, megabatch: int):
        self.lengths, self.multimodal = np.asarray(lengths), np.asarray(multimodal, dtype=bool)
        self.seed, self.group, self.megabatch = seed, group, max(1, megabatch)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.lengths))
        if self.group:
            chunks = [order[i : i + self.megabatch] for i in range(0, len(order), self.megabatch)]
            order = np.concatenate(
                [c[np.lexsort((-self.lengths[c], ~self.multimodal[c]))] for c in chunks]
            ) if chunks else order
        return order

    def __iter__(self):
        return iter(self.order(self.epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return len(self.lengths) - self.start
