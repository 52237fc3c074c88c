"""A small server speaking the part of vLLM's OpenAI-compatible API that serving tuned
models through it uses, run as its own process by the tests:
``python tests/vllm_stub.py --port P --record FILE --base NAME``.

Why not vLLM itself: it needs a GPU (or a long CPU build) and weights the tests cannot
fetch. What the tests check is what llamahost sends and how it reacts, so this server does
what vLLM's does with runtime LoRA loading, over real HTTP, with vLLM's request and error
shapes (vllm/entrypoints/openai/serving_models.py and api_server.py):

- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: only with
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment (otherwise the route does not
  exist: FastAPI's 404 ``{"detail": "Not Found"}``); both fields required (400); a name
  already loaded is a 400 "has already been loaded"; the path must be a PEFT folder
  (adapter_config.json): else vLLM's 404 "No adapter found"; 200 with a text body.
- ``POST /v1/unload_lora_adapter {"lora_name"}``: 404 for an unknown name.
- ``GET /v1/models``: the base model and every loaded adapter (``root`` its path, ``parent``).
- ``POST /v1/chat/completions``: a model that is neither the base nor a loaded adapter is
  vLLM's 404 "The model `x` does not exist."; otherwise a short SSE stream saying which
  model answered, and for an adapter the ``r`` of its adapter_config.json (proof the folder
  it was given is the one llamahost wrote).

Its state lives in the process, so killing it and starting another on the same port is a
replica restart: the adapters are gone, as in vLLM. Every request is recorded as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class State:
    base = "base"
    record_path = ""
    runtime_lora = False
    loras: dict[str, str] = {}
    lock = threading.Lock()


def _error(message: str, kind: str, code: int) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


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

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _record(self, entry: dict) -> None:
        with State.lock, open(State.record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/models":
            self._json(404, {"detail": "Not Found"})
            return
        with State.lock:
            loras = dict(State.loras)
        data = [{"id": State.base, "object": "model", "owned_by": "vllm", "root": State.base, "parent": None}]
        data += [{"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": State.base} for n, p in loras.items()]
        self._json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        path = self.path.rstrip("/")
        self._record({"path": path, "body": body, "auth": self.headers.get("Authorization")})
        if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and not State.runtime_lora:
            self._json(404, {"detail": "Not Found"})
        elif path == "/v1/load_lora_adapter":
            self._load(body)
        elif path == "/v1/unload_lora_adapter":
            with State.lock:
                found = State.loras.pop(body.get("lora_name"), None)
            if found is None:
                self._json(404, _error(f"The lora adapter '{body.get('lora_name')}' cannot be found.", "NotFoundError", 404))
            else:
                self._send(200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully.".encode(), "text/plain")
        elif path == "/v1/chat/completions":
            self._chat(body)
        else:
            self._json(404, {"detail": "Not Found"})

    def _load(self, body: dict) -> None:
        name, lora_path = body.get("lora_name"), body.get("lora_path")
        if not name or not lora_path:
            self._json(400, _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400))
            return
        with State.lock:
            if name in State.loras:
                self._json(400, _error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400))
                return
        if not (Path(lora_path) / "adapter_config.json").is_file():
            self._json(404, _error(f"No adapter found for {lora_path}", "NotFoundError", 404))
            return
        with State.lock:
            State.loras[name] = lora_path
        self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain")

    def _chat(self, body: dict) -> None:
        model = body.get("model")
        with State.lock:
            lora_path = State.loras.get(model)
        if model != State.base and lora_path is None:
            self._json(404, _error(f"The model `{model}` does not exist.", "NotFoundError", 404))
            return
        if lora_path is not None:
            rank = json.loads((Path(lora_path) / "adapter_config.json").read_text())["r"]
            text = f"adapter {model} (r={rank}) answered"
        else:
            text = "the base model answered"
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            event = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(event)}\n\n".encode()

        usage = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                 "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
        stream = chunk({"role": "assistant", "content": text}) + chunk({}, "stop")
        stream += f"data: {json.dumps(usage)}\n\n".encode() + b"data: [DONE]\n\n"
        self._send(200, stream, "text/event-stream")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--base", default="base")
    args = parser.parse_args()
    State.base = args.base
    State.record_path = args.record
    State.runtime_lora = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("true", "1")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
