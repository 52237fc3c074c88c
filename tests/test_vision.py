"""Image inputs end to end, through a real llamahost process.

- The official SDK's vision example (two base64 PNGs, "what differs?"), streaming and
  not, on both surfaces: served by a vision-capable upstream (``vision_upstream.py``, a
  real HTTP process that decodes what it receives), refused with a 400 by the bundled
  text-only model and its hosted aliases.
- Every validation rule as a 400 naming the item and the rule, with nothing sent
  upstream.
- URL images at loopback, link-local/metadata, private addresses, behind a redirect or
  a hostname: refused without a connection to them. Proof: listeners on 127.0.0.1 and
  [::1] that record every connection, and (where ``strace`` can run) the server run
  under ``strace -e trace=connect``, whose log must hold no connect() to any of them.
- Image tokens (145 per 336x336 tile) in the reported usage, the context-window check,
  rate-limit admission and the Prometheus counters.
- The embedded engine with a vision projector (``mmproj``): the bundled model plus the
  tiny random projector of ``tiny_mmproj.py``, run by llama.cpp's mtmd.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from llama_api_client import BadRequestError, LlamaAPIClient
from openai import BadRequestError as OpenAIBadRequest
from openai import OpenAI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, start_server
from test_images import CountingServer, png_bomb
from tiny_mmproj import IMAGE_TOKENS, write_tiny_mmproj

TESTS = Path(__file__).resolve().parent
UPSTREAM = "vision-upstream"
EMBEDDED_VISION = "smol-vision"
TEXT_ONLY = ["SmolLM2-135M-Instruct", "Llama-4-Maverick-17B-128E-Instruct-FP8"]
QUESTION = "What is the difference between these two images?"
TILE_TOKENS = 145


def image_bytes(colour, size=(64, 48), fmt="PNG", **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt, **save)
    return out.getvalue()


RED, BLUE = image_bytes((255, 0, 0)), image_bytes((0, 0, 255), (100, 80))


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_item(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def sdk_example_messages(*images: bytes) -> list[dict]:
    """The SDK's vision example: the question, then the images as base64 data URLs."""
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION}, *(image_item(data_url(i)) for i in images)]}]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- real processes and listeners ------------------------------------------------------


class VisionUpstream:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.record = tmp / "upstream-requests.jsonl"
        self.record.touch()
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "vision_upstream.py"), "--port", str(self.port), "--record", str(self.record)],
            stdout=(tmp / "upstream.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("vision upstream did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class ConnectionRecorder:
    """A listener that records every TCP connection it accepts, and answers each with a
    valid PNG, so a fetch that got through would succeed (and fail the test loudly)."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections: list[tuple] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _serve(self) -> None:
        body = image_bytes((0, 255, 0))
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(peer)
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\nConnection: close\r\n\r\n"
                        + body
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def strace_prefix(log: Path) -> tuple[str, ...]:
    """Run the server under strace, logging every connect(), where strace can run here."""
    strace = shutil.which("strace")
    if strace is None:
        return ()
    probe = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:  # e.g. ptrace not permitted in this container
        return ()
    # --seccomp-bpf: only connect() stops the tracee (cheap); it implies --kill-on-exit.
    return (strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-e", "signal=none", "-o", str(log))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = VisionUpstream(tmp_path_factory.mktemp("vision-upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loopback_v4():
    recorder = ConnectionRecorder("127.0.0.1")
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def loopback_v6():
    recorder = ConnectionRecorder("::1")
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def allowed_host(loopback_v4):
    """An image host on 127.0.0.2, which the gateway's allow-list admits."""
    jpeg = image_bytes((255, 255, 0), (30, 20), fmt="JPEG")
    server = CountingServer(
        "127.0.0.2",
        {
            "/ok.png": (200, {"Content-Type": "image/png"}, RED),
            # Claims PNG, is a JPEG: the sniffed type is what goes upstream.
            "/claims-png.png": (200, {"Content-Type": "image/png"}, jpeg),
            "/to-loopback": (302, {"Location": f"http://{loopback_v4.netloc}/a.png"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        },
    )
    server.jpeg = jpeg
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream, allowed_host):
    tmp = tmp_path_factory.mktemp("vision-gateway")
    mmproj = write_tiny_mmproj(tmp / "tiny-mmproj.gguf")
    upstream_model = (
        'engine = "openai"\nreplicas = ["{url}"]\nupstream_model = "vision-stub"\nvision = true\n'
        "health_check_interval = 0.5\nread_timeout = 10\n"
    ).format(url=upstream.url)
    config = f"""
[images]
allow_private_networks = ["127.0.0.2/32"]
fetch_timeout = 5

[[models]]
id = "{UPSTREAM}"
{upstream_model}
[[models]]
id = "vision-upstream-small"
context_window = 600
{upstream_model}
[[models]]
id = "SmolLM2-135M-Instruct"
aliases = ["Llama-4-Maverick-17B-128E-Instruct-FP8"]
context_window = 2048
threads = 1

[[models]]
id = "{EMBEDDED_VISION}"
mmproj = "{mmproj}"
context_window = 2048
threads = 1
parallel = 1
"""
    server = start_server(tmp, config)
    yield server
    server.stop()


@pytest.fixture
def traced_gateway(tmp_path, upstream, allowed_host):
    """A gateway run under strace (where it can run), logging every connect() it makes."""
    config = f"""
[images]
allow_private_networks = ["127.0.0.2/32"]
fetch_timeout = 5

[[models]]
id = "{UPSTREAM}"
engine = "openai"
replicas = ["{upstream.url}"]
upstream_model = "vision-stub"
vision = true
"""
    log = tmp_path / "connect.strace"
    server = start_server(tmp_path, config, wrapper=strace_prefix(log))
    server.strace_log = log if log.exists() else None
    yield server
    stop_traced(server)


def stop_traced(server) -> None:
    """Stop a server started under strace: signal the server itself (strace would
    detach from it on a signal and leave it running), then strace ends with it and
    writes out its log."""
    if server.strace_log is None or server.process.poll() is not None:
        server.stop()
        return
    pid = server.process.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for child in children:
        os.kill(child, signal.SIGTERM)
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        server.process.kill()
        server.process.wait(timeout=10)


def native(server) -> LlamaAPIClient:
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=120)


def compat(server) -> OpenAI:
    return OpenAI(api_key=server.key, base_url=server.url + "/compat/v1", max_retries=0, timeout=120)


def post(server, body: dict, surface: str = "/v1") -> httpx.Response:
    return httpx.post(f"{server.url}{surface}/chat/completions", json=body, headers=server.headers(), timeout=120)


def metrics(response) -> dict[str, int]:
    return {m.metric: m.value for m in response.metrics}


def prompt_tokens_total(server, model: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llamahost_prompt_tokens_total" and sample.labels.get("model") == model:
                return sample.value
    return 0.0


# --- the SDK example ------------------------------------------------------------------


def test_sdk_vision_example_on_a_vision_upstream(gateway, upstream):
    client = native(gateway)
    before = prompt_tokens_total(gateway, UPSTREAM)
    response = client.chat.completions.create(model=UPSTREAM, messages=sdk_example_messages(RED, BLUE))
    text = response.completion_message.content.text
    assert "64x48 red" in text and "100x80 blue" in text, text
    with_images = metrics(response)["num_prompt_tokens"]

    # What reached the upstream: both images, as data URLs of exactly the bytes sent,
    # with their sniffed type, before the question.
    request = upstream.requests()[-1]
    assert [p.get("image", {}).get("sha256") for p in request["parts"]] == [sha(RED), sha(BLUE), None]
    assert [p["image"]["mime"] for p in request["parts"][:2]] == ["image/png", "image/png"]
    assert request["parts"][2]["text"] == QUESTION

    # 145 tokens per 336x336 tile, one tile each: the same question without the images
    # costs exactly 290 fewer prompt tokens.
    text_only = client.chat.completions.create(model=UPSTREAM, messages=[{"role": "user", "content": QUESTION}])
    assert with_images - metrics(text_only)["num_prompt_tokens"] == 2 * TILE_TOKENS
    assert prompt_tokens_total(gateway, UPSTREAM) - before == with_images + metrics(text_only)["num_prompt_tokens"]

    # Streaming, as the SDK example's stream=True variant reads it.
    pieces, final = [], None
    for chunk in client.chat.completions.create(model=UPSTREAM, messages=sdk_example_messages(RED, BLUE), stream=True):
        if chunk.event.event_type == "progress":
            pieces.append(chunk.event.delta.text)
        elif chunk.event.event_type == "metrics":
            final = {m.metric: m.value for m in chunk.event.metrics}
    assert "".join(pieces) == text
    assert final["num_prompt_tokens"] == with_images
    assert upstream.requests()[-1]["parts"] == request["parts"]


def test_openai_sdk_vision_on_compat(gateway, upstream):
    client = compat(gateway)
    messages = sdk_example_messages(BLUE, RED)
    completion = client.chat.completions.create(model=UPSTREAM, messages=messages)
    assert "100x80 blue" in completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 2 * TILE_TOKENS
    stream = client.chat.completions.create(
        model=UPSTREAM, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == completion.usage.prompt_tokens
    assert [p.get("image", {}).get("sha256") for p in upstream.requests()[-1]["parts"]] == [sha(BLUE), sha(RED), None]


def test_url_images_are_fetched_by_llamahost_and_sent_on_as_data_urls(gateway, upstream, allowed_host):
    host = f"http://127.0.0.2:{allowed_host.port}"
    response = post(
        gateway,
        {
            "model": UPSTREAM,
            "messages": [
                {"role": "user", "content": [image_item(f"{host}/ok.png"), image_item(f"{host}/claims-png.png"), {"type": "text", "text": "?"}]}
            ],
        },
    )
    assert response.status_code == 200, response.text
    parts = upstream.requests()[-1]["parts"]
    # The upstream got the bytes (it refuses any URL that is not a data URL), with the
    # type sniffed from them rather than the one the image host claimed.
    assert parts[0]["image"] == {"mime": "image/png", "sha256": sha(RED), "size": [64, 48], "format": "PNG"}
    assert parts[1]["image"]["mime"] == "image/jpeg" and parts[1]["image"]["sha256"] == sha(allowed_host.jpeg)
    assert allowed_host.hits.count("/ok.png") == 1


@pytest.mark.parametrize("model", TEXT_ONLY)
def test_text_only_models_refuse_the_sdk_example(gateway, upstream, model):
    seen = len(upstream.requests())
    with pytest.raises(BadRequestError) as refused:
        native(gateway).chat.completions.create(model=model, messages=sdk_example_messages(RED, BLUE))
    error = refused.value.body["error"]
    assert error["param"] == "messages[0].content[1]"
    assert f"model {model!r} does not accept image input" in error["message"]
    with pytest.raises(BadRequestError):
        native(gateway).chat.completions.create(model=model, messages=sdk_example_messages(RED, BLUE), stream=True)
    with pytest.raises(OpenAIBadRequest) as compat_refused:
        compat(gateway).chat.completions.create(model=model, messages=sdk_example_messages(RED, BLUE))
    assert compat_refused.value.body["param"] == "messages[0].content[1]"
    assert len(upstream.requests()) == seen


def test_text_only_model_never_fetches_a_url(gateway, loopback_v4, allowed_host):
    hits = len(allowed_host.hits)
    response = post(
        gateway,
        {"model": TEXT_ONLY[0], "messages": [{"role": "user", "content": [image_item(f"http://127.0.0.2:{allowed_host.port}/ok.png")]}]},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content[0]"
    assert len(allowed_host.hits) == hits


# --- validation rules -----------------------------------------------------------------


def _not_an_image() -> str:
    return data_url(b"GIF89a? no, this is plain text pretending to be a PNG", mime="image/png")


VALIDATION_CASES = {
    # name: (content items after the question, param, code, words in the message)
    "png_bomb": ([image_item(data_url(png_bomb()))], "messages[0].content[1].image_url", "image_too_many_pixels", ["10000000000 pixels", "limit"]),
    "claims_png_is_not_an_image": ([image_item(_not_an_image())], "messages[0].content[1].image_url", "invalid_image_format", ["not a readable image"]),
    "bmp_not_allowed": ([image_item(data_url(image_bytes((1, 2, 3), fmt="BMP")))], "messages[0].content[1].image_url", "invalid_image_format", ["BMP", "not allowed"]),
    "ten_images": ([image_item(data_url(RED))] * 10, "messages[0].content[10]", "too_many_images", ["10 images", "at most 9"]),
    "bad_base64": ([image_item("data:image/png;base64,@@@@")], "messages[0].content[1].image_url", None, ["base64"]),
    "file_url": ([image_item("file:///etc/passwd")], "messages[0].content[1].image_url", "image_url_forbidden", ["http or https"]),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_each_validation_rule_is_a_400_naming_item_and_rule(gateway, upstream, case):
    items, param, code, words = VALIDATION_CASES[case]
    seen = len(upstream.requests())
    for surface in ("/v1", "/compat/v1"):
        body = {"model": UPSTREAM, "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}, *items]}]}
        response = post(gateway, body, surface)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        if code:
            assert error["code"] == code, error
        for word in words:
            assert word in error["message"], error["message"]
    assert len(upstream.requests()) == seen


def test_a_26_mb_image_is_refused(gateway, upstream):
    big = RED + b"\0" * (26 * 1024 * 1024)  # a valid PNG followed by 26 MB
    seen = len(upstream.requests())
    response = post(
        gateway, {"model": UPSTREAM, "messages": [{"role": "user", "content": [image_item(data_url(big)), {"type": "text", "text": "?"}]}]}
    )
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[0].image_url" and error["code"] == "image_too_large"
    assert "26214400 bytes" in error["message"]
    assert len(upstream.requests()) == seen


def test_images_in_an_assistant_or_system_message_are_not_accepted(gateway):
    response = post(
        gateway, {"model": UPSTREAM, "messages": [{"role": "system", "content": [image_item(data_url(RED))]}, {"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("messages[0].content[0]")


# --- URLs that must never be fetched --------------------------------------------------


def test_forbidden_addresses_are_refused_without_a_connection(traced_gateway, upstream, loopback_v4, loopback_v6, allowed_host):
    gateway = traced_gateway
    redirector = f"http://127.0.0.2:{allowed_host.port}"
    urls = {
        "loopback": f"http://{loopback_v4.netloc}/a.png",
        "ipv6 loopback": f"http://{loopback_v6.netloc}/a.png",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "private": "http://10.0.0.1/a.png",
        "ipv4-mapped loopback": f"http://[::ffff:127.0.0.1]:{loopback_v4.port}/a.png",
        "hostname resolving to loopback": f"http://localhost:{loopback_v4.port}/a.png",
        "redirect to loopback": f"{redirector}/to-loopback",
        "redirect to metadata": f"{redirector}/to-metadata",
    }
    seen = len(upstream.requests())
    for name, url in urls.items():
        body = {"model": UPSTREAM, "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image_item(url)]}]}
        started = time.monotonic()
        response = post(gateway, body)
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert error["param"] == "messages[0].content[1].image_url", (name, error)
        assert error["code"] == "image_url_forbidden" and "non-public address" in error["message"], (name, error)
        assert time.monotonic() - started < 3, name  # refused, not timed out
    # The redirector was asked (it is allowed); what it pointed at never was.
    assert allowed_host.hits.count("/to-loopback") == 1 and allowed_host.hits.count("/to-metadata") == 1
    assert loopback_v4.connections == [] and loopback_v6.connections == []
    assert len(upstream.requests()) == seen
    if gateway.strace_log is None:
        pytest.skip("strace cannot run here: connections checked by the listeners only")
    stop_traced(gateway)  # strace writes its log out as it exits
    connects = gateway.strace_log.read_text()
    # The log is complete: it holds the connections to the allowed image host.
    assert f"htons({allowed_host.port}), sin_addr=inet_addr(\"127.0.0.2\")" in connects
    for address in ("169.254.169.254", "10.0.0.1"):
        assert address not in connects, address
    for port in (loopback_v4.port, loopback_v6.port):
        assert f"htons({port})" not in connects, port


# --- token accounting -----------------------------------------------------------------


def test_image_tokens_count_against_the_context_window(gateway, upstream):
    seen = len(upstream.requests())
    five_tiles = [image_item(data_url(RED))] * 5  # 725 tokens: over the window of 600
    response = post(
        gateway, {"model": "vision-upstream-small", "messages": [{"role": "user", "content": [*five_tiles, {"type": "text", "text": "?"}]}]}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    prompt = int(re.search(r"prompt \((\d+) tokens\)", error["message"]).group(1))
    assert 5 * TILE_TOKENS <= prompt < 5 * TILE_TOKENS + 20 and "600" in error["message"]
    assert len(upstream.requests()) == seen


def test_image_tokens_are_reserved_by_the_rate_limiter(gateway):
    key = gateway.cli("keys", "create", "--team", "images-team").stdout.strip()
    config = str(gateway.data_dir.parent / "llamahost.toml")  # the CLI resolves the model name in it
    gateway.cli("limits", "set", "--config", config, "--team", "images-team", "--model", UPSTREAM, "--tpm", "400")
    headers = {"Authorization": f"Bearer {key}"}
    three_tiles = [image_item(data_url(RED))] * 3  # 435 tokens: can never fit in 400
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        json={"model": UPSTREAM, "max_completion_tokens": 10, "messages": [{"role": "user", "content": three_tiles}]},
        timeout=60,
    )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "tokens_per_minute_exceeded"
    one_tile = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        json={"model": UPSTREAM, "max_completion_tokens": 30, "messages": [{"role": "user", "content": [image_item(data_url(RED))]}]},
        timeout=60,
    )
    assert one_tile.status_code == 200, one_tile.text
    used = {m["metric"]: m["value"] for m in one_tile.json()["metrics"]}["num_total_tokens"]
    assert used > TILE_TOKENS
    assert int(one_tile.headers["x-ratelimit-remaining-tokens"]) == 400 - used


# --- the embedded engine with a vision projector ----------------------------------------


def test_models_list_says_which_models_see(gateway):
    cards = {m["id"]: m for m in httpx.get(f"{gateway.base_url}/models", headers=gateway.headers(), timeout=10).json()["data"]}
    assert "vision" in cards[EMBEDDED_VISION]["capabilities"] and "tiny-mmproj.gguf" in cards[EMBEDDED_VISION]["engine"]
    assert "vision" in cards[UPSTREAM]["capabilities"]
    for name in TEXT_ONLY:
        assert "vision" not in cards[name]["capabilities"]


def test_embedded_engine_runs_images_through_its_projector(gateway):
    client = native(gateway)
    plain = client.chat.completions.create(
        model=EMBEDDED_VISION, messages=[{"role": "user", "content": QUESTION}], max_completion_tokens=8, temperature=0
    )
    response = client.chat.completions.create(
        model=EMBEDDED_VISION, messages=sdk_example_messages(RED, BLUE), max_completion_tokens=8, temperature=0
    )
    assert response.completion_message.content.text.strip()
    # The projector's real count: 4 embeddings per image, between <start_of_image> and
    # <end_of_image> (text tokens of SmolLM2's vocabulary), beside the same question.
    added = metrics(response)["num_prompt_tokens"] - metrics(plain)["num_prompt_tokens"]
    assert 2 * IMAGE_TOKENS < added < 2 * IMAGE_TOKENS + 40, added

    events = list(
        client.chat.completions.create(
            model=EMBEDDED_VISION, messages=sdk_example_messages(RED, BLUE), max_completion_tokens=8, temperature=0, stream=True
        )
    )
    streamed = "".join(e.event.delta.text for e in events if e.event.event_type == "progress")
    assert streamed == response.completion_message.content.text  # same images, greedy: same reply
    assert {m.metric: m.value for m in events[-1].event.metrics}["num_prompt_tokens"] == metrics(response)["num_prompt_tokens"]

    # A text request after an image request, in the same (only) slot: the prefix cache
    # may reuse the text before the images, never the positions holding an image.
    reused = prefix_reused(gateway)
    again = client.chat.completions.create(
        model=EMBEDDED_VISION, messages=[{"role": "user", "content": QUESTION}], max_completion_tokens=8, temperature=0
    )
    assert again.completion_message.content.text.strip()
    assert 0 < prefix_reused(gateway) - reused < metrics(plain)["num_prompt_tokens"] - 5


def prefix_reused(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llamahost_prefix_cache_tokens_total" and sample.labels.get("model") == EMBEDDED_VISION:
                return sample.value
    return 0.0


def test_embedded_engine_takes_every_allowed_format(gateway):
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    images = {
        "image/jpeg": image_bytes((9, 9, 9), fmt="JPEG"),
        "image/gif": gif.getvalue(),  # animated: the model sees the first frame
        "image/x-icon": image_bytes((9, 9, 9), (32, 32), fmt="ICO"),
    }
    response = compat(gateway).chat.completions.create(
        model=EMBEDDED_VISION,
        messages=[{"role": "user", "content": [*(image_item(data_url(b, m)) for m, b in images.items()), {"type": "text", "text": "?"}]}],
        max_tokens=4,
    )
    assert response.usage.prompt_tokens > 3 * IMAGE_TOKENS


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[[models]]\nid = "x"\nvision = true\n', "set mmproj"),
        ('[[models]]\nid = "x"\nmmproj = "/nonexistent/mmproj.gguf"\n', "mmproj) file not found"),
        ('[[models]]\nid = "x"\nengine = "openai"\nreplicas = ["http://h/v1"]\nmmproj = "/m.gguf"\n', "llamacpp key"),
        ('[images]\nallow_private_networks = ["intranet"]\n', "not a CIDR network"),
        ('[images]\nmax_pixels = 100000000\n', "images.max_pixels"),
    ],
)
def test_bad_vision_config_is_refused_at_startup(tmp_path, config, message):
    from conftest import run_cli

    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_cli(tmp_path / "data", "serve", "--port", "0", "--config", str(path), check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
