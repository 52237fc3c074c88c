"""The embedded engine on llama.cpp's own server (xllamacpp): what llamahost keeps in its
own hands on top of it. Token counts are llama.cpp's, every sampler is set explicitly,
llama.cpp's HTTP listener is reachable by nobody but the engine, and LoRA adapters are
chosen per request through the engine interface."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import httpx
import llama_cpp
import pytest

from llamahost.chat.tools import check_request
from llamahost.config import BUNDLED_SAMPLING, ModelConfig, ModelSampling
from llamahost.engines.base import Finished, TextOut
from llamahost.engines.llamacpp import SAMPLERS, LlamaCppEngine, bundled_model_path, sampling_fields
from llamahost.engines.schema import NUMBER_MAGNITUDE, cap_free_values
from llamahost.errors import InvalidRequest
from llamahost.types.chat import ChatMessage, ChatRequest, SamplingParams, ToolSpec

WEATHER = ToolSpec(
    "get_weather", "Get the weather", {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
)


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def engine(tmp_path_factory):
    from tiny_lora import write_tiny_lora

    lora = write_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora.gguf")
    config = ModelConfig(
        id="engine-test", parallel=2, context_window=2048, threads=1, prefix_cache=False,
        lora_adapters={"tuned": str(lora)}, ngram_speculation=16,
    )
    engine = LlamaCppEngine(config)
    await engine.load()
    yield engine
    await engine.close()


async def run(engine: LlamaCppEngine, request: ChatRequest, max_tokens: int = 12):
    check_request(request)
    prepared = await engine.prepare(request)
    events = [event async for event in engine.generate(prepared, max_tokens)]
    return prepared, events


@pytest.mark.anyio
@pytest.mark.parametrize("tools", [[], [WEATHER]])
async def test_prompt_tokens_are_llama_cpps_own(engine, tools):
    # The count used for the context window and rate limits before generating is the
    # count llama.cpp reports after decoding it, and the ids are those of llama.cpp's
    # tokenizer as llama-cpp-python (another build of it) gives them for the same text.
    request = ChatRequest(
        model="m", messages=[ChatMessage("user", "Is it raining in Bellevue? Ünïcödé ✓")], tools=tools,
        sampling=SamplingParams(temperature=0.0),
    )
    prepared, events = await run(engine, request)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.prompt_tokens == prepared.prompt_tokens
    vocab = llama_cpp.Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
    assert vocab.tokenize(prepared.engine_data.rendered.encode(), add_bos=False, special=True) == prepared.engine_data.prompt


@pytest.mark.anyio
async def test_concurrent_prompts_are_all_tokenized(engine):
    # llama.cpp's listener serves a kept-alive connection on one of its threads until
    # the client drops it; concurrent tokenize calls over a pool of connections once
    # left all but one waiting for a thread (a 60 s read timeout at 8 clients).
    requests = [ChatRequest(model="m", messages=[ChatMessage("user", f"Question number {i}?")]) for i in range(12)]
    prepared = await asyncio.wait_for(asyncio.gather(*(engine.prepare(r) for r in requests)), timeout=30)
    assert all(p.prompt_tokens > 0 for p in prepared)
    assert len({tuple(p.engine_data.prompt) for p in prepared}) == len(requests)


def test_every_sampler_is_set_explicitly():
    fields = sampling_fields(SamplingParams(temperature=0.7, top_p=0.8, top_k=0, repetition_penalty=1.1, seed=7), ModelSampling())
    # Only the Llama API's samplers run, in this order; llama.cpp's defaults (top-k 40,
    # min-p 0.05, DRY, XTC, typical-p) are off whatever the server's own settings.
    assert fields["samplers"] == SAMPLERS == ["penalties", "top_k", "top_p", "temperature"]
    assert fields["top_k"] == 0 and fields["min_p"] == 0.0 and fields["typical_p"] == 1.0
    assert fields["xtc_probability"] == 0.0 and fields["dry_multiplier"] == 0.0 and fields["mirostat"] == 0
    assert fields["temperature"] == 0.7 and fields["top_p"] == 0.8 and fields["repeat_penalty"] == 1.1 and fields["seed"] == 7
    assert sampling_fields(SamplingParams())["seed"] == -1  # a fresh random seed per request


@pytest.mark.anyio
async def test_a_models_dry_default_applies_to_its_requests(engine):
    # The bundled model's own defaults (BUNDLED_SAMPLING: DRY on) are in every request's
    # sampler chain; a model's config overrides them key by key; other GGUFs have none.
    hi = await engine.prepare(ChatRequest(model="m", messages=[ChatMessage("user", "Hi")]))
    body = engine._body(hi, 8)
    assert BUNDLED_SAMPLING.dry_multiplier > 0
    assert "dry" in body["samplers"] and body["dry_multiplier"] == BUNDLED_SAMPLING.dry_multiplier
    assert ModelConfig(id="x", sampling={"dry_base": 2.0}).resolved_sampling == BUNDLED_SAMPLING.model_copy(update={"dry_base": 2.0})
    assert ModelConfig(id="x", path="/m.gguf").resolved_sampling.dry_multiplier == 0.0
    off = engine.config.model_copy(update={"sampling": ModelSampling(dry_multiplier=0.0)})
    assert off.resolved_sampling.dry_multiplier == 0.0
    dry = ModelSampling(dry_multiplier=2.0, dry_allowed_length=2)
    fields = sampling_fields(SamplingParams(temperature=0.0, repetition_penalty=1.2), dry)
    assert fields["samplers"] == ["penalties", "dry", "top_k", "top_p", "temperature"]
    assert fields["dry_multiplier"] == 2.0 and fields["dry_allowed_length"] == 2 and fields["dry_base"] == 1.75
    assert fields["repeat_penalty"] == 1.2  # the request's own penalty still applies
    # llama.cpp takes it, and it changes what a model stuck in a loop says.
    request = ChatRequest(
        model="m", messages=[ChatMessage("user", "Say 'go' twenty times.")], sampling=SamplingParams(temperature=0.0)
    )
    check_request(request)
    prepared = await engine.prepare(request)
    default = engine.config
    try:
        engine.config = off
        assert "dry" not in engine._body(prepared, 8)["samplers"]
        plain = [e async for e in engine.generate(prepared, 24)]
        engine.config = default.model_copy(update={"sampling": dry})
        with_dry = [e async for e in engine.generate(prepared, 24)]
    finally:
        engine.config = default
    assert text_of(with_dry) != text_of(plain), text_of(plain)


@pytest.mark.anyio
async def test_greedy_output_is_independent_of_the_servers_sampler_defaults(engine):
    # The same request twice at temperature 0 with a seed-free sampler: identical text.
    request = ChatRequest(model="m", messages=[ChatMessage("user", "Name a fruit.")], sampling=SamplingParams(temperature=0.0))
    _, first = await run(engine, request)
    _, second = await run(engine, request)
    assert [e for e in first if not isinstance(e, Finished)] == [e for e in second if not isinstance(e, Finished)]


@pytest.mark.anyio
async def test_llama_cpp_listener_needs_the_engines_key(engine):
    socket_dir = Path(engine._server._socket_dir)
    assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700  # only this user can even connect
    socket_path = str(socket_dir / "server.sock")
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path), base_url="http://x") as client:
        paths = [("GET", "/props"), ("GET", "/slots"), ("GET", "/lora-adapters"), ("POST", "/completion"), ("POST", "/tokenize")]
        for method, path in paths:
            response = await client.request(method, path, json={"prompt": "hi", "content": "hi"})
            assert response.status_code == 401, (path, response.text)
        wrong = await client.get("/props", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401


def test_only_llamahost_port_listens(server):
    # llama.cpp's server always starts an HTTP listener; here it is a Unix socket, so the
    # only TCP port the whole llamahost process listens on is its own.
    pid = server.process.pid
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    inodes = {link[len("socket:[") : -1] for link in inodes if link.startswith("socket:[")}
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.add(int(fields[1].rsplit(":", 1)[1], 16))
    assert listening == {server.port}


def text_of(events) -> str:
    return "".join(getattr(event, "text", "") for event in events)


@pytest.mark.anyio
async def test_a_lora_adapter_is_chosen_per_request(engine):
    def ask(adapter):
        request = ChatRequest(
            model="m", messages=[ChatMessage("user", "Name a fruit.")], sampling=SamplingParams(temperature=0.0), adapter=adapter
        )
        return run(engine, request, 8)

    assert engine.adapters == ["tuned"]
    _, base = await ask(None)
    _, tuned = await ask("tuned")
    assert text_of(tuned) != text_of(base)  # the random adapter changes what the model says
    # Side by side in one batch, each request gets its own: the base one is unchanged.
    (_, base_again), (_, tuned_again) = await asyncio.gather(ask(None), ask("tuned"))
    assert text_of(base_again) == text_of(base) and text_of(tuned_again) == text_of(tuned)


@pytest.mark.anyio
async def test_an_unknown_adapter_is_a_400(engine):
    request = ChatRequest(model="m", messages=[ChatMessage("user", "Hi")], adapter="untuned")
    with pytest.raises(InvalidRequest) as info:
        await run(engine, request)
    assert info.value.param == "model" and "untuned" in info.value.message


def test_lora_adapter_keys_are_checked_at_startup(tmp_path):
    from conftest import run_cli

    path = tmp_path / "bad.toml"
    path.write_text('[[models]]\nid = "x"\nlora_adapters = { tuned = "/nonexistent/lora.gguf" }\n')
    result = run_cli(tmp_path / "data", "serve", "--port", "0", "--config", str(path), check=False)
    assert result.returncode == 2, result.stderr
    assert "LoRA adapter 'tuned' (lora_adapters) file not found" in result.stderr
    path.write_text('[[models]]\nid = "x"\nengine = "openai"\nreplicas = ["http://h/v1"]\nngram_speculation = 8\n')
    result = run_cli(tmp_path / "data", "serve", "--port", "0", "--config", str(path), check=False)
    assert result.returncode == 2 and "ngram_speculation is a llamacpp key" in result.stderr


@pytest.mark.anyio
async def test_a_long_tmpdir_still_gives_the_listener_a_socket(tmp_path, monkeypatch):
    # A Unix socket path is at most 107 bytes; under a deep TMPDIR (a test's tmp path, a
    # container volume) llama.cpp used to fail with a bare "Failed to init server".
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    engine = LlamaCppEngine(ModelConfig(id="long-tmp", parallel=1, context_window=512, threads=1))
    await engine.load()
    try:
        assert len(os.fsencode(Path(engine._server._socket_dir) / "server.sock")) <= 107
        request = ChatRequest(model="long-tmp", messages=[ChatMessage("user", "Hi")], sampling=SamplingParams(temperature=0))
        _, events = await run(engine, request, max_tokens=2)
        assert isinstance(events[-1], Finished)
    finally:
        await engine.close()


def test_caps_only_tighten_free_strings_and_numbers():
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "string"},
            "nullable": {"type": ["string", "null"], "minLength": 50},
            "bounded": {"type": "string", "maxLength": 5000},
            "choice": {"type": "string", "enum": ["a", "b"]},
            "when": {"type": "string", "format": "date"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "either": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/inner"}]},
            "score": {"type": "number"},
            "count": {"type": "integer", "minimum": 0},
            "huge": {"type": "integer", "minimum": 10**16},
        },
        "$defs": {"inner": {"type": "object", "properties": {"note": {"type": "string"}}}},
    }
    capped = cap_free_values(schema, 40, 6)
    props = capped["properties"]
    assert props["free"]["maxLength"] == 40 and props["tags"]["items"]["maxLength"] == 40
    assert props["nullable"]["maxLength"] == 50  # never below the schema's own minLength
    assert props["bounded"]["maxLength"] == 5000  # the schema's own bound stands, even above the cap
    assert "maxLength" not in props["choice"] and "maxLength" not in props["when"]
    assert props["either"]["anyOf"][0]["maxLength"] == 40 and capped["$defs"]["inner"]["properties"]["note"]["maxLength"] == 40
    assert props["score"] == {"type": "number", "multipleOf": 1e-6, "maximum": NUMBER_MAGNITUDE, "minimum": -NUMBER_MAGNITUDE}
    assert props["count"] == {"type": "integer", "minimum": 0, "maximum": NUMBER_MAGNITUDE}
    assert props["huge"] == {"type": "integer", "minimum": 10**16}  # a cap that would leave no value is not added
    assert schema["properties"]["free"] == {"type": "string"}  # the request's own schema is left as given
    assert cap_free_values(schema, 0, 0) == schema


@pytest.mark.anyio
async def test_a_models_json_caps_close_long_strings_and_numbers(engine):
    # Strings and numbers the schema leaves unbounded are ended by the grammar at the
    # model's caps, whatever the model would have written: the JSON parses. (Without the
    # number cap this greedy reply's "confidence" runs on in digits to the token limit.)
    import json

    schema = {
        "type": "object", "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
    }
    request = ChatRequest(
        model="m", messages=[ChatMessage("user", "How many legs does a spider have?")], json_schema=schema,
        sampling=SamplingParams(temperature=0.0),
    )
    bundled = ModelConfig(id="x").resolved_sampling
    assert bundled.json_string_max_length > 0 and bundled.json_number_decimals > 0  # the bundled model's defaults
    other = ModelConfig(id="x", path="/m.gguf").resolved_sampling
    assert other.json_string_max_length == 0 and other.json_number_decimals == 0
    default = engine.config
    try:
        engine.config = default.model_copy(update={"sampling": ModelSampling(json_string_max_length=24, json_number_decimals=2)})
        _, events = await run(engine, request, max_tokens=200)
    finally:
        engine.config = default
    text = "".join(e.text for e in events if isinstance(e, TextOut))
    assert isinstance(events[-1], Finished) and events[-1].stop_reason != "length", text
    reply = json.loads(text)
    assert 0 < len(reply["answer"]) <= 24
    assert len(repr(reply["confidence"]).partition(".")[2]) <= 2 and abs(reply["confidence"]) <= NUMBER_MAGNITUDE
