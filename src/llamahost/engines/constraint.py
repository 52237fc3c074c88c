"""Constrained decoding for the embedded engine: a grammar (Lark text from
``chat.tools``) compiled by llguidance into a per-token mask over the vocabulary.

Why llguidance rather than llama.cpp's own GBNF grammars (``LlamaGrammar``):
- cost: llama.cpp's grammar sampler in llama-cpp-python's sampler chain checks every
  candidate of the 49k-token vocabulary against the grammar at every step, while
  llguidance computes the mask from a precomputed token trie in tens of microseconds,
  which keeps constrained decoding close to free decoding (see bench/structured.py);
- honesty: llguidance compiles JSON Schema itself and refuses keywords it cannot
  enforce, where llama-cpp-python's ``json_schema_to_gbnf`` drops them silently;
- tool calls: its Lark dialect embeds JSON Schemas (``%json``) in a larger grammar and
  has lexeme negation, which is how "text, or calls of known tools" is written.
xgrammar and outlines would need torch or a Hugging Face tokenizer; llguidance reads
the tokenizer straight from the llama.cpp vocabulary.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidRequest

if TYPE_CHECKING:
    import llguidance


class GrammarCompiler:
    """Compiles grammars against one model's vocabulary. The tokenizer view costs about
    half a second to build, so it is built on first use, not at model load."""

    def __init__(self, vocab, n_vocab: int, eog_tokens: list[int]) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._eog_tokens = eog_tokens
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _get_tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                import llguidance.llamacpp

                with warnings.catch_warnings():
                    # llguidance reads token attributes through a llama.cpp call that
                    # llama-cpp-python marks deprecated, once per vocabulary entry.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                        self._vocab, n_vocab=self._n_vocab, eos_token=self._eog_tokens
                    )
            return self._tokenizer

    def compile(self, grammar: str, param: str) -> Constraint:
        """A fresh matcher for one generation; a grammar llguidance refuses is a 400
        naming ``param``, the request field the grammar came from."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self._get_tokenizer(), LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"the schema cannot be enforced: {matcher.get_error()}", param=param)
        return Constraint(matcher, self._n_vocab)


class Constraint:
    """One generation's grammar state: masks logits before sampling, then follows
    each sampled token."""

    def __init__(self, matcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def mask_logits(self, _input_ids, logits: np.ndarray) -> np.ndarray:
        """A llama-cpp-python logits processor: disallowed tokens get -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self._n_vocab]
        np.copyto(logits, -np.inf, where=allowed == 0)
        return logits

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding went off its grammar: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing but end of turn may follow."""
        return self._matcher.is_stopped()
