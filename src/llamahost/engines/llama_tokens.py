"""Token counting with the real Llama 3 / Llama 4 tokenizers, for upstream models.

The tokenizers are Meta's own tiktoken BPE files and classes from the PyPI package
``llama-models`` (only its tokenizer modules are imported: they need tiktoken, not
torch). The chat layout around the messages is written out here because
``llama-models``' Llama 4 ``ChatFormat`` imports torch; the layout is small and
fixed (header tokens, role, blank line, content, end-of-turn), see the Llama 3 and
Llama 4 prompt-format documentation.

Counts are exact for text messages sent to a Llama 3.x / Llama 4 upstream. Tool
definitions are counted as their JSON (the upstream's template wraps them in some
prose, not counted) and each image as the hosted Llama API documents it: 145 tokens
per 336x336 tile (``chat.images.image_tokens``); the upstream's own ``usage`` is
preferred whenever it reports one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from ..types.chat import ChatMessage, ToolSpec
from ..types.images import TOKENS_PER_TILE

TokenizerName = Literal["llama3", "llama4"]

# Per message: <|start_header_id|> role <|end_header_id|> "\n\n" ... <|eot_id|>
# (Llama 4: <|header_start|> ... <|header_end|> ... <|eot|>): three special tokens.
_SPECIALS_PER_MESSAGE = 3


def tokenizer_for(setting: str, upstream_model: str) -> TokenizerName:
    if setting in ("llama3", "llama4"):
        return setting  # type: ignore[return-value]
    name = upstream_model.lower().replace("_", "-")
    return "llama4" if ("llama-4" in name or "llama4" in name) else "llama3"


class LlamaTokenCounter:
    def __init__(self, name: TokenizerName) -> None:
        if name == "llama4":
            from llama_models.llama4.tokenizer import Tokenizer
        else:
            from llama_models.llama3.tokenizer import Tokenizer
        self.name = name
        self._tokenizer = Tokenizer.get_instance()
        self._role_tokens = {role: self.count(role) for role in ("system", "user", "assistant", "ipython")}
        self._blank_line = self.count("\n\n")

    def count(self, text: str) -> int:
        if not text:
            return 0
        # Text is counted as text even if it spells a special token.
        return len(self._tokenizer.encode(text, bos=False, eos=False, allowed_special=set(), disallowed_special=()))

    def count_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> int:
        total = 1  # <|begin_of_text|>
        for message in messages:
            role = "ipython" if message.role == "tool" else message.role
            total += _SPECIALS_PER_MESSAGE + self._role_tokens[role] + self._blank_line
            total += self.count(message.content)
            for call in message.tool_calls:
                total += self.count(json.dumps({"name": call.name, "parameters": call.arguments}))
            # An image not (yet) loaded has no size: one tile, the least it can cost.
            total += sum(i.loaded.tokens if i.loaded is not None else TOKENS_PER_TILE for i in message.images)
        if tools:
            specs = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
            total += self.count(json.dumps(specs))
        # The open assistant header the model continues from.
        total += 2 + self._role_tokens["assistant"] + self._blank_line
        return total
