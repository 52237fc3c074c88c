"""Test fixtures: real ``llamahost serve`` processes on free ports, driven over HTTP.

Subprocesses run this checkout's ``src`` (PYTHONPATH), so the suite tests the code
in the tree whatever is installed.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
STARTUP_TIMEOUT = 120.0
# The machine's PostgreSQL (trust auth); every test works in a schema of its own.
PG = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamahost_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHOST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LLAMAHOST_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


def run_cli(data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llamahost", *args],
        env=llamahost_env(data_dir, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds (a clean
    shutdown first: servers and workers release their leases and engines on the way out)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    data_dir: Path
    key: str
    log_path: Path
    env: dict[str, str]

    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(self.data_dir, *args, env=self.env, check=check)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_server(
    tmp_path: Path,
    config: str | None = None,
    env: dict[str, str] | None = None,
    key: bool = True,
    args: tuple[str, ...] = (),
    wrapper: tuple[str, ...] = (),
) -> Server:
    """``wrapper``: a command the server runs under (e.g. ``strace ...``)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = list(args)
    if config is not None:
        config_path = tmp_path / "llamahost.toml"
        config_path.write_text(config)
        args += ["--config", str(config_path)]
    api_key = run_cli(data_dir, "keys", "create", "--team", "test", "--name", "tests", env=env).stdout.strip() if key else ""
    port = free_port()
    log_path = tmp_path / "server.log"
    full_env = llamahost_env(data_dir, env)
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "llamahost", "serve", "--port", str(port), *args],
        env=full_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(process, port, data_dir, api_key, log_path, env or {}, tls="tls_cert" in (config or ""))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2, verify=False).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy in {STARTUP_TIMEOUT}s:\n{server.log()}")


@pytest.fixture
def server_factory(tmp_path):
    started: list[Server] = []

    def factory(
        config: str | None = None, env: dict[str, str] | None = None, key: bool = True, name: str = "s", args: tuple[str, ...] = ()
    ) -> Server:
        server = start_server(tmp_path / f"{name}{len(started)}", config, env, key, args)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One default server (bundled model, default config) shared by the session."""
    s = start_server(tmp_path_factory.mktemp("default-server"))
    yield s
    s.stop()


# Session-wide: three modules train on it (test_finetune_hf, test_finetune_kubernetes,
# test_fine_tuning_cluster) and only read it; building it loads the bundled GGUF's tokenizer.
@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory) -> Path:
    """A base in Hugging Face format (what ``hf_weights`` names): a tiny llama (two layers,
    random weights) with SmolLM2's tokenizer and chat template, saved by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamahost.finetune.base_model import load_tokenizer, resolve_base_gguf

    folder = tmp_path_factory.mktemp("hf-base")
    tokenizer = load_tokenizer(resolve_base_gguf("bundled"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def anyio_backend():
    return "asyncio"


@contextmanager
def postgres_schema(prefix: str = "llh_test") -> Iterator[str]:
    """A fresh schema of the test database, dropped with everything in it afterwards, so
    tests (and parallel runs) never see each other's tables."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def postgres_url(schema: str, driver: str = "postgresql") -> str:
    # libpq's `options` puts every connection of the process on the test's schema.
    return f"{PG.replace('postgresql', driver, 1)}?options=-csearch_path%3D{schema}"


def postgres_env(schema: str) -> dict[str, str]:
    """A server's environment on that schema; with PostgreSQL every replica must be
    given the same master key."""
    return {"LLAMAHOST_DATABASE_URL": postgres_url(schema), "LLAMAHOST_MASTER_KEY": secrets.token_hex(32)}


@contextmanager
def opened_stores(backend: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> Iterator:
    """The tenancy stores (``open_stores``) on SQLite under ``data_dir``, or (``backend`` =
    "postgresql") on a schema of their own that the process's environment points at for the
    test; closed, and the schema dropped, afterwards. For the stores' tests on both databases."""
    from llamahost.config import load_config
    from llamahost.tenancy.stores import open_stores

    with ExitStack() as stack:
        if backend == "postgresql":
            for name, value in postgres_env(stack.enter_context(postgres_schema(prefix))).items():
                monkeypatch.setenv(name, value)
        stores = open_stores(load_config(None, data_dir=data_dir))
        try:
            yield stores
        finally:
            stores.db.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with postgres_schema() as schema:
        yield schema


@pytest.fixture
def pg_env(pg_schema: str) -> dict[str, str]:
    return postgres_env(pg_schema)
