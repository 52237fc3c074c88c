"""Checking a grammar before llama.cpp gets it.

The grammars (Lark text from ``tool_format.py``, with ``%json`` JSON Schema parts) are
enforced by llama.cpp's LLGuidance, which compiles JSON Schema itself and refuses
keywords it cannot enforce, where a JSON Schema to GBNF conversion would drop them
silently. llama.cpp's server, though, answers a grammar it cannot compile by generating
without it, so every grammar is compiled here first by the same library (llguidance)
and a refusal is a 400 naming the request field the grammar came from.
"""

from __future__ import annotations

from ..errors import InvalidRequest


def check_grammar(grammar: str, param: str) -> None:
    from llguidance import LLMatcher

    # No tokenizer: the grammar's own validity (syntax, schema keywords), which is all
    # that can fail for a grammar llamahost wrote; the vocabulary is llama.cpp's business.
    error = LLMatcher.validate_grammar(LLMatcher.grammar_from_lark(grammar), None)
    if error:
        raise InvalidRequest(f"the schema cannot be enforced: {error}", param=param)
