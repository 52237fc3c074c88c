"""A stand-in Llama Guard 3 upstream for the cascade tests, run as its own process:
``python tests/guard_stub.py --port P --record FILE --verdict 'unsafe\\nS11'``.

Why not a real Llama Guard: no Llama Guard GGUF can be fetched here, and the bundled
chat model answers the Llama Guard prompt with whatever it likes (the llama-guard
provider's own test accepts a 502 for that reason). What the cascade tests check is
which messages reach the escalation model and what the server answers with its
verdict, so this server speaks the part of the OpenAI-compatible API an ``openai``
engine uses (``GET /v1/models``, streamed ``POST /v1/chat/completions``) over real
HTTP and always answers the verdict it was started with. Every chat request is
recorded as a JSON line (its messages), so a test sees exactly what was escalated.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    verdict = "safe"
    record_path = ""
    lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": "llama-guard-stand-in", "object": "model", "owned_by": "stub"}]}
            self._send(200, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b'{"detail": "Not Found"}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"detail": "Not Found"}', "application/json")
            return
        with State.lock, open(State.record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"messages": body.get("messages"), "temperature": body.get("temperature")}) + "\n")
        created, model = int(time.time()), body.get("model")

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps({'id': 'chatcmpl-guard', 'object': 'chat.completion.chunk', 'created': created, 'model': model, **payload})}\n\n".encode()

        stream = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": State.verdict}, "finish_reason": None}]})
        stream += event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        stream += event({"choices": [], "usage": {"prompt_tokens": 200, "completion_tokens": 4, "total_tokens": 204}})
        self._send(200, stream + b"data: [DONE]\n\n", "text/event-stream")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--verdict", default="safe", help="what every call answers, e.g. 'unsafe\\nS11'")
    args = parser.parse_args()
    State.verdict = args.verdict.replace("\\n", "\n")
    State.record_path = args.record
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
