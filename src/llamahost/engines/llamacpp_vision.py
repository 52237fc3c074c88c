"""Image input for the embedded engine: a GGUF vision projector (``mmproj``) run by
llama.cpp's multimodal library, mtmd, through llama-cpp-python's ``mtmd_cpp`` bindings.

llama-cpp-python's own ``MTMDChatHandler`` serves images only inside ``Llama``'s
``create_chat_completion`` (its own template rendering, sampling and one sequence at a
time), and loads images by URL itself. llamahost keeps its own pipeline (chat template
from the GGUF, grammars, stop sequences, continuous batching in ``scheduler.py``) and
needs only the step in between, which the handler does not expose: tokenize a rendered
prompt with its images into mtmd chunks, then evaluate them into one sequence of the
batch's KV cache. That step is here, on the same mtmd calls the handler makes.

How a request goes through it:

- ``with_markers`` puts one marker per image at the start of its user message (images
  before the text, as the Llama vision models are trained), then the model's chat
  template renders the prompt as for text. The marker is random per loaded model, so a
  client's text can never pose as an image position.
- ``Projector.tokenize`` turns the prompt and the validated image bytes (decoded by
  Pillow, first frame of an animated GIF, as RGB) into mtmd chunks; their token count
  is the prompt's real size, used for the context-window check and rate limits. The
  prompt's token list holds ``IMAGE_POSITION`` where image embeddings go.
- When the scheduler gives the request a slot, ``VisionPrompt.evaluate_into`` decodes
  every chunk up to the last text chunk into that slot's sequence (image chunks are
  encoded and their embeddings decoded, non-causally where the model wants it) and
  returns how many positions it filled; the scheduler decodes the remaining text as any
  prompt and samples from it.

The hooks into ``llamacpp.py`` and ``scheduler.py`` are marked ``# vision hook``.
"""

from __future__ import annotations

import ctypes
import io
import secrets
import threading
import weakref
from dataclasses import replace
from pathlib import Path

from PIL import Image

from ..types.chat import ChatRequest
from ..types.images import LoadedImage

# The token stored for positions that hold image embeddings: never a real token id, so
# the scheduler's prompt-prefix reuse never matches a later prompt's text against them
# (the KV cache there holds an image, not tokens).
IMAGE_POSITION = -1


def resolve_projector_path(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"vision projector (mmproj) file not found: {resolved}")
    return resolved


def with_markers(request: ChatRequest, marker: str) -> ChatRequest:
    """The request with each image replaced by ``marker`` at the start of its message."""
    messages = [
        replace(m, content="".join(marker for _ in m.images) + ("\n" + m.content if m.content else ""))
        if m.images
        else m
        for m in request.messages
    ]
    return replace(request, messages=messages)


def _silence_mtmd_logs() -> None:
    """mtmd logs every image it encodes to stderr; llamahost logs requests itself."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    @llama_cpp.llama_log_callback
    def ignore(level, text, user_data):  # noqa: ARG001
        return None

    _silence_mtmd_logs.callback = ignore  # type: ignore[attr-defined]  # keep it alive
    mtmd.mtmd_helper_log_set(ignore, None)


class Projector:
    """A loaded mmproj bound to one text model (``llama_model *``)."""

    def __init__(self, path: Path, text_model, model_name: str, threads: int) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd = mtmd
        _silence_mtmd_logs()
        self.marker = f"<__llamahost_image_{secrets.token_hex(8)}__>"
        self._marker_bytes = self.marker.encode()  # the params keep a pointer to it
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = threads
        params.print_timings = False
        params.media_marker = self._marker_bytes
        ctx = mtmd.mtmd_init_from_file(str(path).encode(), text_model, params)
        if not ctx:
            raise RuntimeError(
                f"{path.name}: llama.cpp could not load this projector for {model_name} "
                "(a projector must belong to its model: same embedding size)"
            )
        if not mtmd.mtmd_support_vision(ctx):
            mtmd.mtmd_free(ctx)
            raise RuntimeError(f"{path.name}: this projector has no vision encoder")
        if mtmd.mtmd_decode_use_mrope(ctx):
            # M-RoPE (Qwen2-VL and relatives) gives an image fewer positions than tokens;
            # the scheduler keeps one position per token.
            mtmd.mtmd_free(ctx)
            raise RuntimeError(f"{path.name}: projectors with M-RoPE positions (Qwen2-VL family) are not supported")
        self._ctx = ctx
        # Tokenizing (image preprocessing) runs on request threads; one at a time.
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, mtmd.mtmd_free, ctx)

    def close(self) -> None:
        self._finalizer()

    def tokenize(self, prompt: str, images: list[LoadedImage], add_special: bool) -> VisionPrompt:
        mtmd = self._mtmd
        bitmaps = []
        try:
            for image in images:
                bitmaps.append(_bitmap(mtmd, image))
            text = mtmd.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text = encoded
            text.text_len = len(encoded)
            text.add_special = add_special
            text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            if not chunks:
                raise MemoryError("mtmd could not allocate input chunks")
            prepared = VisionPrompt(self, chunks)  # frees the chunks whatever happens next
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            with self._lock:
                result = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), array, len(bitmaps))
            if result != 0:
                # 1: markers and images disagree (cannot happen: we place both); 2: preprocessing failed.
                raise RuntimeError(f"mtmd could not tokenize the prompt with its images (error {result})")
            prepared.read_tokens()
            return prepared
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)


class VisionPrompt:
    """A tokenized prompt with images (mtmd chunks), evaluated once into a sequence."""

    def __init__(self, projector: Projector, chunks) -> None:
        self._projector = projector
        self._mtmd = projector._mtmd
        self._chunks = chunks
        # The prompt, one entry per position: text tokens, IMAGE_POSITION for embeddings.
        self.tokens: list[int] = []
        self._tail = 0  # tokens of the last text chunk, which the scheduler decodes itself
        # Freed after evaluation, or when a request ends without generating (refused by
        # the rate limiter, client gone).
        self._finalizer = weakref.finalize(self, projector._mtmd.mtmd_input_chunks_free, chunks)

    def read_tokens(self) -> None:
        mtmd = self._mtmd
        tokens: list[int] = []
        last_text = 0
        for i in range(mtmd.mtmd_input_chunks_size(self._chunks)):
            chunk = mtmd.mtmd_input_chunks_get(self._chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(pointer[j] for j in range(count.value))
                last_text = count.value
            else:
                tokens.extend([IMAGE_POSITION] * mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                last_text = 0
        if last_text == 0:
            # Chat templates always end with the assistant's header: text to sample after.
            raise RuntimeError("a prompt with images must end with text")
        self.tokens, self._tail = tokens, last_text

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def evaluate_into(self, llama_context, seq_id: int, n_batch: int) -> int:
        """Decode every chunk but the last (text) one into ``seq_id`` from position 0, on
        the thread that owns ``llama_context``; return the positions filled."""
        import llama_cpp

        mtmd = self._mtmd
        try:
            n_past = 0
            for i in range(mtmd.mtmd_input_chunks_size(self._chunks) - 1):
                chunk = mtmd.mtmd_input_chunks_get(self._chunks, i)
                # The helper adds a text chunk's length to this, and sets it after an image.
                new_n_past = llama_cpp.llama_pos(n_past)
                result = mtmd.mtmd_helper_eval_chunk_single(
                    self._projector._ctx, llama_context, chunk, n_past, seq_id, n_batch, False, ctypes.byref(new_n_past)
                )
                if result != 0:
                    raise RuntimeError(f"llama.cpp could not evaluate the prompt's images (error {result})")
                n_past = new_n_past.value
            assert n_past == len(self.tokens) - self._tail
            return n_past
        finally:
            self._finalizer()


def _bitmap(mtmd, image: LoadedImage):
    # Pillow decodes (already validated: format, size, pixel count): llama.cpp's own
    # decoder (stb_image) never sees client bytes, and ICO, which it cannot read, works.
    with Image.open(io.BytesIO(image.data)) as decoded:
        rgb = decoded.convert("RGB")  # the first frame of an animated GIF
    raw = rgb.tobytes()
    buffer = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
    bitmap = mtmd.mtmd_bitmap_init(rgb.width, rgb.height, buffer)
    if not bitmap:
        raise MemoryError("mtmd could not allocate an image bitmap")
    return bitmap
