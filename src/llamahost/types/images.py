"""An image as the chat service hands it to engines: validated bytes, sniffed type and
size, and what it costs in tokens. Loading and validation live in ``chat/images.py``;
engines see only this, so no engine ever fetches a client's URL."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from functools import cached_property

TILE_SIZE = 336
TOKENS_PER_TILE = 145  # the hosted Llama API's documented cost of one 336x336 tile
MAX_TILES = 16  # larger images are scaled down to fit this many tiles (as Llama 4 does)


@dataclass(frozen=True)
class LoadedImage:
    data: bytes
    mime_type: str
    width: int
    height: int
    frames: int
    param: str

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)

    @cached_property
    def data_url(self) -> str:
        """The validated bytes as a data URL, with the sniffed (not the claimed) type."""
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"


def image_tokens(width: int, height: int) -> int:
    tiles = math.ceil(width / TILE_SIZE) * math.ceil(height / TILE_SIZE)
    return TOKENS_PER_TILE * max(1, min(tiles, MAX_TILES))
