"""A GGUF's chat template (Jinja), rendered in Python the way Hugging Face Transformers
renders it, so llamahost controls the exact prompt text (its own tool prompt for
templates without tool support, tool turns, images' markers) and counts its tokens.

Written here, on jinja2's sandbox, because llama.cpp's server would apply the template
itself only on its chat endpoint, which refuses a custom grammar together with
``tools`` and rewrites replies with its own tool parsers.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for Hugging Face's ``{% generation %}`` chat-template tag."""

    tags = {"generation"}

    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # Transformers' tojson: no HTML escaping, unicode kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise ValueError(message)


class ChatTemplate:
    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        self.source = template
        self._template = environment.from_string(template)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        """The prompt up to and including the assistant's header, special tokens as text."""
        return self._template.render(
            messages=messages,
            tools=tools,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
            add_generation_prompt=True,
            raise_exception=_raise_exception,
            strftime_now=lambda f: datetime.now().strftime(f),
        )
