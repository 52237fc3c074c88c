"""Schemathesis hooks for ``test_fuzz.py`` (loaded through ``SCHEMATHESIS_HOOKS``)."""

from __future__ import annotations

import schemathesis

MODEL = "SmolLM2-135M-Instruct"  # the fuzzed server's one chat model
CHAT_PATHS = ("/v1/chat/completions", "/compat/v1/chat/completions")
MAX_STEERED_TOKENS = 4


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """A fuzzed model name is a 404 before any engine runs: every other chat body gets
    the served model's name, so what lies behind (prompt, grammar, tools, engine) is
    fuzzed too, with few tokens to keep it cheap."""
    body = case.body
    if case.operation.path not in CHAT_PATHS or not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return
    if len(body["model"]) % 2:
        return
    body["model"] = MODEL
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_STEERED_TOKENS:
            body[field] = MAX_STEERED_TOKENS
