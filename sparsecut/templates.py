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


# ChatML as SmolLM2 and Qwen write it, minus the default system prompt their templates insert when a conversation
# has none (~20 tokens of every short sample): for models trained here, which never saw that prompt.
CHATML_NO_DEFAULT_SYSTEM = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML_NO_DEFAULT_SYSTEM}  # names for a tokenizer chat template (from_backbones, --chat-template)


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


Segments = list[tuple[str, bool]]  # (text, is an assistant reply to supervise)


def _vicuna_v1(turns, add_generation_prompt: bool) -> Segments:
    """``SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:`` exactly as LLaVA-1.5's ``conv_vicuna_v1``."""
    system = VICUNA_V1_SYSTEM
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    segments: Segments = [(system + " ", False)]
    for role, content in turns:
        if role == "user":
            segments.append((f"USER: {content} ", False))
        else:
            segments += [("ASSISTANT:", False), (f" {content}</s>", True)]
    if add_generation_prompt and (not turns or turns[-1][0] == "user"):
        segments.append(("ASSISTANT:", False))
    return segments


def _plain(turns, image_token: str) -> Segments:
    """LLaVA's stage-1 ``plain`` format: the image(s), then the caption and a newline; no roles, no system."""
    images = sum(content.count(image_token) for role, content in turns if role == "user")
    segments: Segments = [(image_token * images, False)]
    segments += [(content + "\n", True) for role, content in turns if role == "assistant"]
    return segments


def _tokenizer_template(turns, tokenizer, add_generation_prompt: bool) -> Segments:
    """The tokenizer's own chat template; each reply is what rendering through it adds after the generation prompt."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("Template 'tokenizer' needs a tokenizer with a chat_template; use 'vicuna_v1' or 'plain'.")
    messages = [{"role": role, "content": content} for role, content in turns]

    def apply(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    segments: Segments = []
    done = ""
    for k, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        prompt, full = apply(k, True), apply(k + 1, False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("The tokenizer's chat template does not render conversations prefix by prefix; its replies cannot be located.")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    rest = apply(len(turns), add_generation_prompt)
    if not rest.startswith(done):
        raise ValueError("The tokenizer's chat template does not render conversations prefix by prefix; its replies cannot be located.")
    segments.append((rest[len(done):], False))
    return [seg for seg in segments if seg[0]]


def render_segments(
    conversation, template: str, tokenizer=None, add_generation_prompt: bool = True, image_token: str = "<image>"
) -> Segments:
    """The prompt as ``(text, supervised)`` pieces: assistant replies are marked for the training labels."""
    turns = _normalise(conversation, image_token)
    if template == "vicuna_v1":
        return _vicuna_v1(turns, add_generation_prompt)
    if template == "plain":
        return _plain([t for t in turns if t[0] != "system"], image_token)
    if template == "tokenizer":
        return _tokenizer_template(turns, tokenizer, add_generation_prompt)
    raise ValueError(f"Unknown chat template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}.")


def render(
    conversation, template: str, tokenizer=None, add_generation_prompt: bool = True, image_token: str = "<image>"
) -> str:
    """Render ``conversation`` with a named template (``TEMPLATE_NAMES``) to a prompt string."""
    return "".join(text for text, _ in render_segments(conversation, template, tokenizer, add_generation_prompt, image_token))
