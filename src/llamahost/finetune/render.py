"""Examples → token ids and labels: the model's own chat template, loss on assistant turns.

The masks come from character spans of the rendered text (tokenizer offsets), not from
tokenizing pieces separately: llama.cpp tokenizes the whole rendered prompt at once, and a
piecewise tokenization can differ from that at the seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from .dataset import Example

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass
class Rendered:
    line: int
    text: str
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _template(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def trained_spans(tokenizer: Any, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss covers: each trained
    assistant reply and the end-of-turn token that closes it (so the model learns to stop),
    not the template's text after that token."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    full = _template(tokenizer, messages, generation_prompt=False)
    end_of_turn = tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(example.messages):
        if not message.trained:
            continue
        prompt = _template(tokenizer, messages[:i], generation_prompt=True)
        upto = _template(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(prompt)):
            # A template that rewrites earlier turns (e.g. drops past reasoning) has no
            # single rendering whose prefix is each training prompt.
            raise InvalidRequest(
                f"line {example.line}: the model's chat template does not render this conversation as a "
                "growing prefix, so its assistant turns cannot be masked",
                param="training_file",
            )
        end = len(upto)
        closing = upto.rfind(end_of_turn, len(prompt)) if end_of_turn else -1
        if closing >= 0:
            end = closing + len(end_of_turn)
        spans.append((len(prompt), end))
    return full, spans


def render(tokenizer: Any, example: Example, max_seq_len: int) -> Rendered:
    text, spans = trained_spans(tokenizer, example)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if len(ids) > max_seq_len:
        raise InvalidRequest(
            f"line {example.line}: {len(ids)} tokens, more than max_seq_len {max_seq_len}", param="training_file"
        )
    labels = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True):
        inside = any(lo <= start and end <= hi for lo, hi in spans)
        labels.append(token if inside else IGNORE)
    return Rendered(example.line, text, ids, labels)
