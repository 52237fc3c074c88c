"""A small vision-capable OpenAI-compatible server, run as its own process by the tests:
``python tests/vision_upstream.py --port P --record FILE``.

Why not a real vision model: none ships in a package the tests can install (the
bundled SmolLM2 is text-only, and ``llama_cpp.server`` on it refuses image parts), and
what these tests check is what llamahost *sends* upstream. So this server does what a
vision upstream does with ``image_url`` parts, for real over HTTP: it decodes each data
URL with Pillow and answers with what it sees (size and main colour of each image). It
refuses any image that is not a data URL (a URL would mean llamahost passed a client's
URL on), and records every request it gets (one JSON line each, images summarised by
the SHA-256 of their bytes) so the tests can check exactly what arrived.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "yellow": (255, 255, 0),
}


def colour_name(rgb: tuple[int, int, int]) -> str:
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], rgb)))


def describe(url: str) -> tuple[str, dict]:
    header, _, payload = url.partition(",")
    data = base64.b64decode(payload)
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        centre = rgb.getpixel((rgb.width // 2, rgb.height // 2))
        summary = {
            "mime": header.removeprefix("data:").removesuffix(";base64"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": [rgb.width, rgb.height],
            "format": image.format,
        }
    return f"a {rgb.width}x{rgb.height} {colour_name(centre)} image", summary


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record_path = ""
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "vision-stub", "object": "model", "owned_by": "tests"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts_seen = []
        seen = []
        try:
            for message in body["messages"]:
                content = message.get("content")
                if not isinstance(content, list):
                    parts_seen.append({"role": message["role"], "text": content})
                    continue
                for part in content:
                    if part["type"] == "text":
                        parts_seen.append({"role": message["role"], "text": part["text"]})
                        continue
                    url = part["image_url"]["url"]
                    if not url.startswith("data:"):
                        raise ValueError(f"refusing to fetch an image URL: {url[:80]}")
                    description, summary = describe(url)
                    seen.append(description)
                    parts_seen.append({"role": message["role"], "image": summary})
        except Exception as exc:
            self._record({"error": str(exc), "parts": parts_seen})
            self._json(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
            return
        self._record({"model": body.get("model"), "stream": body.get("stream"), "parts": parts_seen})
        if not seen:
            answer = "I see no image."
        elif len(seen) == 1:
            answer = f"I see {seen[0]}."
        else:
            answer = "I see " + ", then ".join(seen) + ". They differ in colour and size."
        if body.get("stream"):
            self._stream(answer)
        else:
            self._json(
                200,
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    # No "usage", like llama.cpp's servers: llamahost counts the prompt itself.
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                },
            )

    def _stream(self, answer: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        words = answer.split(" ")
        for i, word in enumerate(words):
            delta = {"content": word + (" " if i < len(words) - 1 else "")}
            if i == 0:
                delta["role"] = "assistant"
            self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _event(self, chunk: dict) -> None:
        chunk |= {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()), "model": "vision-stub"}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.flush()

    def _record(self, entry: dict) -> None:
        with self.lock, open(self.record_path, "a") as out:
            out.write(json.dumps(entry) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    Handler.record_path = args.record
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
