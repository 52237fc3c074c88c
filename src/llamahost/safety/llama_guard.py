"""The ``llama-guard`` provider's prompt and verdict parser.

The prompt is the Llama Guard 3 chat template (the ``chat_template`` of Meta's
Llama-Guard-3-8B/1B tokenizer) rendered here rather than by the model's own template,
so any GGUF of a Llama Guard 3 model gets exactly it, whatever metadata it carries.
Rendered without ``<|begin_of_text|>``: llama.cpp adds the BOS token itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..types.chat import ChatMessage
from .taxonomy import BY_CODE, CATEGORIES

_HEADER = (
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
    "policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    + "".join(f"{c.code}: {c.title}.\n" for c in CATEGORIES)
    + "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
)
_FOOTER = (
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    categories: tuple[str, ...] = ()  # wire names


class UnparseableVerdict(ValueError):
    pass


def conversation_turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """The conversation as Llama Guard's alternating ``User``/``Agent`` turns.

    Llama Guard knows two speakers. System and tool messages are input to the model, so
    they count as the ``User`` side; consecutive turns of one speaker are joined (the
    template requires strict alternation) and leading ``Agent`` turns are dropped (it
    must start with ``User``).
    """
    turns: list[tuple[str, str]] = []
    for message in messages:
        speaker = "Agent" if message.role == "assistant" else "User"
        text = message.content.strip()
        if not text:
            continue
        if turns and turns[-1][0] == speaker:
            turns[-1] = (speaker, f"{turns[-1][1]}\n\n{text}")
        elif turns or speaker == "User":
            turns.append((speaker, text))
    return turns


def render_prompt(messages: Sequence[ChatMessage]) -> str:
    turns = conversation_turns(messages)
    if not turns:
        turns = [("User", "")]
    role = turns[-1][0]
    body = "".join(f"{speaker}: {text}\n\n" for speaker, text in turns)
    return _HEADER.format(role=role) + body + _FOOTER.format(role=role)


def parse_verdict(output: str) -> Verdict:
    """``safe`` | ``unsafe`` + a line of ``S1,S10`` codes -> a Verdict with wire names."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    first = lines[0].lower() if lines else ""
    if first == "safe":
        return Verdict(flagged=False)
    if first != "unsafe":
        raise UnparseableVerdict(f"expected 'safe' or 'unsafe', got {output[:80]!r}")
    names: list[str] = []
    for code in (lines[1].split(",") if len(lines) > 1 else []):
        category = BY_CODE.get(code.strip().upper())
        if category is None:
            raise UnparseableVerdict(f"unknown Llama Guard category {code.strip()!r} in {output[:80]!r}")
        if category.name not in names:
            names.append(category.name)
    return Verdict(flagged=True, categories=tuple(names))
