"""Tuned models of an upstream model, served as LoRA adapters loaded into every vLLM replica
at run time.

vLLM serves a LoRA adapter under a model name of its own once it is loaded with
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` (the server must run with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``); a request then names the
adapter as its ``model``. ``lora_path`` is a PEFT folder the *replica* reads, so llamahost
writes each tuned model's folder into ``lora_dir``, a volume the replicas mount (at
``upstream_lora_dir``), once, and asks each replica to load it.

A replica forgets its adapters when it restarts. Two things notice: the health loop, which
reads each replica's ``/models`` and reloads whatever it no longer lists, and a request,
whose 404 for the adapter's name makes the engine reload it on that replica and send the
request once more. Loading an adapter twice is harmless: vLLM answers 400 "has already been
loaded", which counts as loaded (another llamahost process may have loaded it first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx

from ..errors import EngineFailure, NotFound
from ..types.tuned import TunedModel, TunedModelSource

log = logging.getLogger(__name__)

LOAD_PATH = "/load_lora_adapter"
UNLOAD_PATH = "/unload_lora_adapter"
# What vLLM's FastAPI answers for a route it does not have: runtime loading is off.
_NO_ROUTE = {"detail": "Not Found"}


class AdapterMissing(Exception):
    """The replica does not serve the adapter (it restarted since loading it)."""


def folder_name(model: TunedModel) -> str:
    # Tuned model ids hold ':' ("ft:base:team:suffix:job"); keep file names portable.
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.id)


def _base(url: str) -> str:
    return url.rstrip("/")


class UpstreamLoras:
    """The tuned models one upstream model serves, and which replica has loaded which."""

    def __init__(self, model_id: str, lora_dir: str, upstream_lora_dir: str | None, source: TunedModelSource) -> None:
        self.model_id = model_id
        self.lora_dir = Path(lora_dir).expanduser()
        self.upstream_dir = (upstream_lora_dir or lora_dir).rstrip("/")
        self.source = source
        # Adapters asked for since start (or preloaded): every replica should have them.
        self.wanted: dict[str, TunedModel] = {}
        self._loaded: dict[str, set[str]] = {}  # replica URL -> adapter names
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # One writer per folder: replicas loading the same adapter at once wait for it.
        self._folder_locks: dict[str, asyncio.Lock] = {}

    def name(self, model: TunedModel) -> str:
        """The name the upstream serves the adapter under (the tuned model's own id)."""
        return model.id

    def upstream_path(self, model: TunedModel) -> str:
        return f"{self.upstream_dir}/{folder_name(model)}"

    def resolve(self, team_id: int | None, model_id: str) -> TunedModel:
        for model in self.wanted.values():
            if model.id == model_id and model.team_id == team_id:
                return model
        found = self.source.get(team_id, model_id) if team_id is not None else None
        if found is None or found.base_model != self.model_id:
            raise NotFound(f"model {model_id!r} not found", param="model", code="model_not_found")
        return found

    def want(self, model: TunedModel) -> None:
        self.wanted.setdefault(self.name(model), model)

    def preload(self) -> None:
        """Every team's tuned models of this base: the health loop loads them into each replica."""
        for model in self.source.all_for_base(self.model_id):
            self.wanted.setdefault(self.name(model), model)

    def _write_folder(self, model: TunedModel) -> None:
        target = self.lora_dir / folder_name(model)
        if (target / "adapter_config.json").is_file():
            return
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        files = self.source.adapter_peft(model)
        # Written beside the target and renamed into place: a replica never reads half a folder.
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.lora_dir))
        try:
            for relative, data in files.items():
                if Path(relative).is_absolute() or ".." in Path(relative).parts:
                    raise EngineFailure(f"adapter file {relative!r} of {model.id} escapes its folder")
                path = tmp / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            # The replicas run as their own user: the folder must be readable to them.
            os.chmod(tmp, 0o755)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "adapter_config.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def forget(self, replica_url: str, name: str) -> None:
        self._loaded.get(_base(replica_url), set()).discard(name)

    def loaded_on(self, replica_url: str) -> set[str]:
        return set(self._loaded.get(_base(replica_url), ()))

    async def ensure(self, client: httpx.AsyncClient, replica_url: str, model: TunedModel, headers: dict[str, str]) -> None:
        """Makes the replica serve the adapter (writing its folder first if needed)."""
        name = self.name(model)
        self.wanted.setdefault(name, model)
        url = _base(replica_url)
        if name in self._loaded.get(url, ()):
            return
        lock = self._locks.setdefault((url, name), asyncio.Lock())
        async with lock:
            if name in self._loaded.get(url, ()):
                return
            async with self._folder_locks.setdefault(name, asyncio.Lock()):
                await asyncio.to_thread(self._write_folder, model)
            response = await client.post(
                url + LOAD_PATH, json={"lora_name": name, "lora_path": self.upstream_path(model)}, headers=headers
            )
            if response.status_code != 200 and not _already_loaded(response):
                raise _load_failure(url, name, self.upstream_path(model), response)
            self._loaded.setdefault(url, set()).add(name)
            log.info("LoRA adapter %s loaded into %s", name, url)

    async def unload(self, client: httpx.AsyncClient, replica_urls: list[str], name: str, headers: dict[str, str]) -> None:
        """Unloads a deleted tuned model from every replica and removes its folder."""
        model = self.wanted.pop(name, None)
        for url in map(_base, replica_urls):
            self._loaded.get(url, set()).discard(name)
            try:
                response = await client.post(url + UNLOAD_PATH, json={"lora_name": name}, headers=headers)
                if response.status_code not in (200, 404):
                    log.warning("unloading %s from %s: HTTP %s", name, url, response.status_code)
            except httpx.HTTPError as exc:
                log.warning("unloading %s from %s failed: %s", name, url, exc)
        if model is not None:
            await asyncio.to_thread(shutil.rmtree, self.lora_dir / folder_name(model), True)

    async def reconcile(self, client: httpx.AsyncClient, replica_urls: list[str], headers: dict[str, str]) -> None:
        """One pass of the health loop: drop what was deleted, reload what a replica lost."""
        if not self.wanted:
            return
        for name, model in list(self.wanted.items()):
            if await asyncio.to_thread(self.source.get, model.team_id, model.id) is None:
                await self.unload(client, replica_urls, name, headers)

        async def one(url: str) -> None:
            known = self._loaded.setdefault(url, set())
            # Only what was loaded before the listing was asked for can be missing from it: an
            # adapter a request loads meanwhile is not "lost" because the listing predates it.
            before = set(known)
            try:
                response = await client.get(url + "/models", headers=headers)
                listed = {m.get("id") for m in response.json().get("data", [])} if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                return  # down: the replica pool's own checks deal with it
            if listed is None:
                return
            lost = before - listed
            if lost:
                log.warning("replica %s no longer serves %d LoRA adapter(s) (restarted?): reloading", url, len(lost))
            known -= lost
            for name, model in list(self.wanted.items()):
                if name in listed:
                    known.add(name)  # loaded by another llamahost process, or before a restart of ours
                    continue
                try:
                    await self.ensure(client, url, model, headers)
                except (EngineFailure, httpx.HTTPError) as exc:
                    log.warning("reloading LoRA adapter %s into %s failed: %s", name, url, exc)

        await asyncio.gather(*(one(_base(u)) for u in replica_urls))


def _already_loaded(response: httpx.Response) -> bool:
    return response.status_code == 400 and "already been loaded" in response.text


def _load_failure(url: str, name: str, path: str, response: httpx.Response) -> EngineFailure:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (404, 405) and body == _NO_ROUTE:
        return EngineFailure(
            f"upstream {url} does not load LoRA adapters at run time: start vLLM with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
            code="upstream_misconfigured",
            status_code=502,
        )
    return EngineFailure(
        f"upstream {url} could not load LoRA adapter {name!r} from {path} (HTTP {response.status_code}: "
        f"{response.text[:300]}); check that lora_dir is mounted at upstream_lora_dir on the replica",
        code="upstream_misconfigured",
        status_code=502,
    )
