"""``tool_choice: "auto"`` as a calibrated decision instead of a sampled one.

Under ``auto`` a reply is either tool calls or an answer, and the choice is made by its
first tokens. Left to sampling, a small model's choice is poor in a particular way: it
ranks the call opening second or third behind a plain-text start ("Yes", "It") on
questions that plainly need the tool, so it answers "Is it raining in Bellevue?" from
thin air. The model's probability of opening a call still separates the questions that
need a tool from those that do not; only its scale is off. So the decision is made once,
before the reply: one decoding step on the same prompt reads the probability of the
first token of the call opening (llama.cpp's top log-probabilities; the prompt's prefix
stays in the slot's cache for the reply), and the reply is then held by the grammar to
the branch chosen — calls when that probability is above the model's
``auto_tool_threshold``, the answer otherwise. The decision is deterministic (the probe is
greedy and reads probabilities, it samples nothing), whatever the request's temperature.

Only the first token is probed: the opening is several tokens (``<tool_call>[{"name": "``),
and once its first token is taken the model has, in effect, committed; a token that
starts the opening or spans it counts as opening it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..types.chat import ChatRequest
from .tool_format import ToolFormat

# How many of the most likely first tokens the probe reads. A call opening outside them
# has a probability below the last of them (under 1 % on the bundled model), far under
# any useful threshold.
PROBE_TOP = 20

Complete = Callable[[dict[str, Any], Callable[[dict[str, Any]], bool]], None]


@dataclass(frozen=True)
class ToolDecision:
    """How one ``auto`` request's reply is decided: the opening to look for, the
    threshold, and the grammar of each branch."""

    opening: str
    threshold: float
    calls_grammar: str
    answer_grammar: str

    def grammar_for(self, p_call: float) -> str:
        return self.calls_grammar if p_call > self.threshold else self.answer_grammar


def tool_decision(request: ChatRequest, fmt: ToolFormat, config: ModelConfig) -> ToolDecision | None:
    """The decision for ``request``, or None where the reply's first token decides
    alone (not ``auto``, no tools, or the model's threshold is "off")."""
    threshold = config.resolved_auto_tool_threshold
    if threshold is None or request.tool_choice != "auto" or not request.tools:
        return None
    if request.json_schema is not None and not fmt.open:
        # A format whose calls open with "{" (Llama 3's JSON calls) against a JSON answer:
        # both branches start alike, so the first token tells nothing; the grammar's
        # combined choice stays the model's.
        return None
    calls, answer = fmt.grammar(request, "calls"), fmt.grammar(request, "answer")
    assert calls is not None and answer is not None
    return ToolDecision(fmt.call_prefix, threshold, calls, answer)


def probe_body(body: dict[str, Any]) -> dict[str, Any]:
    """One greedy step of ``body``'s prompt, unconstrained, reporting the top tokens'
    probabilities. Same prompt and cache flag: the reply that follows reuses the prefix."""
    probe = {k: v for k, v in body.items() if k not in ("grammar", "stream_options")}
    probe.update(max_tokens=1, n_probs=PROBE_TOP, temperature=0.0)
    return probe


def _top_tokens(chunk: dict[str, Any]) -> list[tuple[str, float]]:
    """(token text, probability) of the first generated token's top alternatives, from
    the OpenAI-style completion chunk or llama.cpp's native one."""
    choice = (chunk.get("choices") or [{}])[0]
    content = (choice.get("logprobs") or {}).get("content") or chunk.get("completion_probabilities") or []
    if not content:
        return []
    first = content[0]
    return [(t.get("token", ""), math.exp(t["logprob"])) for t in first.get("top_logprobs") or []]


def opening_probability(top: list[tuple[str, float]], opening: str) -> float:
    """The probability mass of first tokens that open a call: tokens that are a prefix
    of the opening, or begin with all of it."""
    return sum(p for token, p in top if token and (opening.startswith(token) or token.startswith(opening)))


def probe_top(complete: Complete, body: dict[str, Any]) -> list[tuple[str, float]]:
    """Run the probe (blocking, on the caller's thread, in the caller's slot): the most
    likely first tokens of ``body``'s reply and their probabilities, likeliest first."""
    seen: dict[str, Any] = {}

    def on_chunk(chunk: dict[str, Any]) -> bool:
        if "error" in chunk:
            seen["error"] = chunk["error"]
            return True
        top = _top_tokens(chunk)
        if top and "top" not in seen:
            seen["top"] = top
        return False

    complete(probe_body(body), on_chunk)
    if "error" in seen:
        raise RuntimeError(f"llama.cpp refused the tool-choice probe: {seen['error'].get('message')}")
    return seen.get("top", [])


def probe(complete: Complete, body: dict[str, Any], opening: str) -> float:
    """The probability that ``body``'s reply opens a call (``opening``)."""
    return opening_probability(probe_top(complete, body), opening)
