"""Pretrain the tiny family's Llama-style LM on the synthetic text (as the paper starts from a pretrained Vicuna).

The corpus is packed into fixed-length blocks separated by ``</s>``; plain next-token prediction with AdamW and a
cosine schedule. Deterministic for a seed on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from .loop import fit


def lm_config(tokenizer, hidden: int = 128, layers: int = 8, heads: int = 4, max_positions: int = 512) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pack(tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """(num_blocks, block) token ids: every text followed by </s>, concatenated, cut into blocks."""
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += encoded + [tokenizer.eos_token_id]
    usable = len(ids) // block * block
    if usable == 0:
        raise ValueError(f"The corpus has {len(ids)} tokens, fewer than one block of {block}.")
    return torch.tensor(ids[:usable]).view(-1, block)


def pretrain_lm(tokenizer, texts: list[str], steps: int, batch_size: int = 32, block: int = 128, lr: float = 3e-3,
                seed: int = 0, config: LlamaConfig | None = None, progress: bool = True) -> tuple[LlamaForCausalLM, list[float]]:
    """Train a tiny Llama from scratch; returns the model and the loss per step."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config or lm_config(tokenizer))
    data = pack(tokenizer, texts, block)

    def step_loss(generator):
        batch = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]  # (B, block)
        logits = model(input_ids=batch).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())

    losses = fit(model, step_loss, steps, lr, seed, weight_decay=0.0, betas=(0.9, 0.95), warmup_ratio=0.03,
                 desc="tiny LM", progress=progress)
    return model, losses
