"""Chat templates: LLaVA-1.5's ``vicuna_v1``, stage-1 ``plain``, and the tokenizer's own (``tokenizer``).

A conversation is a list of ``{"role": "user" | "assistant" | "system", "content": ...}`` where content is a
string with ``<image>`` placeholders, or HF-style parts ``[{"type": "image"}, {"type": "text", "text": ...}]``.
"""

from __future__ import annotations

TEMPLATE_NAMES = ("vicuna_v1", "plain", "tokenizer")

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def message_text(content, image_token: str = "<image>") -> str:
    """Content as a string: HF-style parts joined, images as ``image_token`` followed by a newline (as LLaVA)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"Message content must be a string or a list of parts; got {type(content).__name__}.")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            pieces.append(image_token + "\n")
        elif kind == "text":
            pieces.append(part["text"])
        else:
            raise ValueError(f"Unknown content part {part!r}; expected {{'type': 'image'}} or {{'type': 'text', 'text': ...}}.")
    return "".join(pieces)


def _normalise(conversation, image_token: str) -> list[tuple[str, str]]:
    if not conversation:
        raise ValueError("The conversation is empty; it needs at least one user message.")
    turns = []
    for message in conversation:
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"Unknown role {role!r}; use 'system', 'user' or 'assistant'.")
        turns.append((role, message_text(message.get("content", ""), image_token)))
    return turns


def render_vicuna_v1(conversation, add_generation_prompt: bool = True, image_token: str = "<image>") -> str:
    """``SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:`` exactly as LLaVA-1.5's ``conv_vicuna_v1``."""
    turns = _normalise(conversation, image_token)
    system = VICUNA_V1_SYSTEM
    if turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    text = system + " "
    for role, content in turns:
        if role == "user":
            text += f"USER: {content} "
        else:
            text += f"ASSISTANT: {content}</s>"
    if add_generation_prompt and (not turns or turns[-1][0] == "user"):
        text += "ASSISTANT:"
    return text


def render_plain(conversation, add_generation_prompt: bool = True, image_token: str = "<image>") -> str:
    """LLaVA's stage-1 ``plain`` format: the image, then the caption and a newline; no roles, no system."""
    turns = [t for t in _normalise(conversation, image_token) if t[0] != "system"]
    images = sum(content.count(image_token) for role, content in turns if role == "user")
    text = image_token * images
    for role, content in turns:
        if role == "assistant":
            text += content + "\n"
    return text


def render(
    conversation, template: str, tokenizer=None, add_generation_prompt: bool = True, image_token: str = "<image>"
) -> str:
    """Render ``conversation`` with a named template (``TEMPLATE_NAMES``) to a prompt string."""
    if template == "vicuna_v1":
        return render_vicuna_v1(conversation, add_generation_prompt, image_token)
    if template == "plain":
        return render_plain(conversation, add_generation_prompt, image_token)
    if template == "tokenizer":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("Template 'tokenizer' needs a tokenizer with a chat_template; use 'vicuna_v1' or 'plain'.")
        messages = [{"role": role, "content": content} for role, content in _normalise(conversation, image_token)]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    raise ValueError(f"Unknown chat template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}.")
