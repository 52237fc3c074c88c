"""Does the tokenizer transformers builds from a GGUF give llama.cpp's token ids?

Training on one tokenization and serving with another would teach the adapter sequences
llama.cpp never feeds it, so the trainer refuses to start when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Mismatch:
    text: str
    transformers_ids: list[int]
    llamacpp_ids: list[int]


def llamacpp_vocab(gguf: Path) -> Any:
    from llama_cpp import Llama

    # vocab_only: the tokenizer without the weights, so this check costs milliseconds.
    return Llama(model_path=str(gguf), vocab_only=True, verbose=False)


def llamacpp_ids(vocab: Any, text: str) -> list[int]:
    # special=True: control tokens written in the text (the chat template's <|im_start|>)
    # are parsed as the single tokens llama.cpp's server also makes of a rendered prompt.
    return list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def transformers_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def compare(tokenizer: Any, gguf: Path, texts: list[str]) -> list[Mismatch]:
    vocab = llamacpp_vocab(gguf)
    try:
        mismatches = []
        for text in texts:
            ours, theirs = transformers_ids(tokenizer, text), llamacpp_ids(vocab, text)
            if ours != theirs:
                mismatches.append(Mismatch(text, ours, theirs))
        return mismatches
    finally:
        vocab.close()
