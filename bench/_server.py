"""Starting a ``llamahost serve`` process for a benchmark (shared by the bench scripts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llamahost(data_dir: Path, config: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, str]:
    """Serve this checkout with ``config`` (TOML text) from ``data_dir``; returns
    (process, base URL, an API key of team ``bench``) once healthy."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHOST_")}
    full_env |= {"PYTHONPATH": str(ROOT / "src"), "LLAMAHOST_DATA_DIR": str(data_dir), **(env or {})}
    config_path = data_dir / "bench.toml"
    config_path.write_text(config)
    key = subprocess.run(
        [sys.executable, "-m", "llamahost", "keys", "create", "--team", "bench"],
        env=full_env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamahost", "serve", "--port", str(port), "--config", str(config_path), "--log-level", "warning"],
        env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("llamahost did not start")
