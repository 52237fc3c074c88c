"""Real upstream engines for tests: ``python -m llama_cpp.server`` (llama-cpp-python's
OpenAI-compatible server) on the bundled model, one process per replica."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import SRC, free_port

sys.path.insert(0, str(SRC))
from llamahost.engines.llamacpp import bundled_model_path  # noqa: E402


class UpstreamReplica:
    """One llama_cpp.server process on a fixed port, so it can be killed and come back
    at the same URL."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> "UpstreamReplica":
        cmd = [
            # llama_cpp.server itself, with weight repacking off (it crashes on AMX hosts).
            sys.executable, str(Path(__file__).with_name("llamacpp_no_repack.py")),
            "--model", str(bundled_model_path()),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
            # Its default aborts a running stream whenever another request arrives.
            "--interrupt_requests", "False",
            # SmolLM2 is a ChatML model; this handler adds tool calls (grammar-forced).
            "--chat_format", "chatml-function-calling",
        ]
        self.process = subprocess.Popen(cmd, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log_path.read_text(errors='replace')}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("llama_cpp.server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


def upstream_model_config(model_id: str, replicas: list[UpstreamReplica], extra: str = "") -> str:
    urls = ", ".join(f'"{r.url}"' for r in replicas)
    return (
        f'[[models]]\nid = "{model_id}"\nengine = "openai"\nupstream_model = "smollm2"\n'
        f"replicas = [{urls}]\ncontext_window = 2048\nread_timeout = 5\nconnect_timeout = 2\n"
        f"health_check_interval = 0.5\nejection_seconds = 1\n{extra}\n"
    )
