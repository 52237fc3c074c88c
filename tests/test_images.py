"""Image loading and validation rules, and URL fetching that never reaches forbidden addresses."""

from __future__ import annotations

import base64
import io
import ipaddress
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from llamahost.chat.images import ImagePolicy, load_images, validate_bytes
from llamahost.types.images import image_tokens
from llamahost.types.chat import ImageInput
from llamahost.errors import InvalidRequest


def png(width=8, height=8, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


async def load(*urls: str, policy: ImagePolicy | None = None):
    images = [ImageInput(url=u, param=f"messages[0].content[{i}]") for i, u in enumerate(urls)]
    return await load_images(images, policy or ImagePolicy())


def refused(exc_info, param: str, *words: str) -> None:
    error = exc_info.value
    assert error.status_code == 400 and error.param == param, error.body()
    for word in words:
        assert word in error.message, error.message


@pytest.mark.anyio
async def test_valid_png_jpeg_gif_ico_load():
    images = {}
    for fmt in ("PNG", "JPEG", "GIF", "ICO"):
        out = io.BytesIO()
        Image.new("RGB", (32, 32), (1, 2, 3)).save(out, format=fmt)
        images[fmt] = out.getvalue()
    loaded = await load(*(data_url(b) for b in images.values()))
    assert [i.mime_type for i in loaded] == ["image/png", "image/jpeg", "image/gif", "image/x-icon"]
    assert loaded[0].width == 32 and loaded[0].tokens == 145


@pytest.mark.anyio
async def test_format_is_sniffed_not_claimed():
    with pytest.raises(InvalidRequest) as info:
        await load(data_url(b"this is not an image at all", mime="image/png"))
    refused(info, "messages[0].content[0].image_url", "not a readable image")
    # A real image with a wrong claimed type is judged by its bytes.
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="JPEG")
    (loaded,) = await load(data_url(out.getvalue(), mime="image/png"))
    assert loaded.mime_type == "image/jpeg"


@pytest.mark.anyio
async def test_disallowed_format_is_refused():
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="BMP")
    with pytest.raises(InvalidRequest) as info:
        await load(data_url(out.getvalue()))
    refused(info, "messages[0].content[0].image_url", "BMP", "not allowed")


@pytest.mark.anyio
async def test_png_bomb_is_refused_before_decoding():
    bomb = png_bomb()
    assert len(bomb) < 2000
    with pytest.raises(InvalidRequest) as info:
        await load(data_url(bomb))
    refused(info, "messages[0].content[0].image_url", "10000000000 pixels", "limit")


@pytest.mark.anyio
async def test_ten_images_are_refused():
    url = data_url(png())
    assert len(await load(*[url] * 9)) == 9
    with pytest.raises(InvalidRequest) as info:
        await load(*[url] * 10)
    refused(info, "messages[0].content[9]", "10 images", "at most 9")


@pytest.mark.anyio
async def test_26_mb_image_is_refused():
    big = png() + b"\0" * (26 * 1024 * 1024)
    with pytest.raises(InvalidRequest) as info:
        await load(data_url(big))
    refused(info, "messages[0].content[0].image_url", "limit")
    with pytest.raises(InvalidRequest) as info:
        validate_bytes(big, "messages[0].content[0].image_url", ImagePolicy())
    refused(info, "messages[0].content[0].image_url", "26", "limit")


@pytest.mark.anyio
async def test_bad_base64_and_non_base64_data_urls():
    with pytest.raises(InvalidRequest) as info:
        await load("data:image/png;base64,@@@@")
    refused(info, "messages[0].content[0].image_url", "base64")
    with pytest.raises(InvalidRequest) as info:
        await load("data:image/png,rawbytes")
    refused(info, "messages[0].content[0].image_url", "base64")


@pytest.mark.anyio
async def test_non_http_schemes_are_refused():
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"):
        with pytest.raises(InvalidRequest) as info:
            await load(url)
        refused(info, "messages[0].content[0].image_url", "http")


def test_animated_gif_counts_frames_and_tokens_scale_with_tiles():
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    loaded = validate_bytes(out.getvalue(), "p", ImagePolicy())
    assert loaded.frames == 3
    assert image_tokens(336, 336) == 145
    assert image_tokens(337, 336) == 290
    assert image_tokens(10_000, 10_000) == 145 * 16


class CountingServer:
    """A local HTTP server that counts the requests it receives."""

    def __init__(self, host: str, routes: dict[str, tuple[int, dict, bytes]]):
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def forbidden_target():
    server = CountingServer("127.0.0.1", {"/a.png": (200, {"Content-Type": "image/png"}, png())})
    yield server
    server.close()


ALLOW_127_0_0_2 = ImagePolicy(allow_networks=(ipaddress.ip_network("127.0.0.2/32"),))


@pytest.mark.anyio
async def test_private_loopback_link_local_and_metadata_addresses_are_refused(forbidden_target):
    port = forbidden_target.port
    for url in (
        f"http://127.0.0.1:{port}/a.png",
        f"http://localhost:{port}/a.png",  # a hostname resolving to a loopback address
        f"http://[::1]:{port}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/a.png",
        "http://192.168.0.1/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
    ):
        with pytest.raises(InvalidRequest) as info:
            await load(url)
        refused(info, "messages[0].content[0].image_url", "non-public")
    assert forbidden_target.hits == []


@pytest.mark.anyio
async def test_redirect_to_a_private_address_is_refused(forbidden_target):
    target = f"http://127.0.0.1:{forbidden_target.port}/a.png"
    redirector = CountingServer("127.0.0.2", {"/r": (302, {"Location": target}, b"")})
    try:
        with pytest.raises(InvalidRequest) as info:
            await load(f"http://127.0.0.2:{redirector.port}/r", policy=ALLOW_127_0_0_2)
        refused(info, "messages[0].content[0].image_url", "non-public")
        assert redirector.hits == ["/r"]
        assert forbidden_target.hits == []
    finally:
        redirector.close()


@pytest.mark.anyio
async def test_allow_listed_network_is_fetched_with_size_cap():
    body = png(40, 20)
    server = CountingServer(
        "127.0.0.2",
        {
            "/ok.png": (200, {"Content-Type": "image/png"}, body),
            "/moved": (301, {"Location": "/ok.png"}, b""),
            "/big": (200, {}, b"\0" * 4096),
            "/missing": (404, {}, b""),
        },
    )
    try:
        (loaded,) = await load(f"http://127.0.0.2:{server.port}/moved", policy=ALLOW_127_0_0_2)
        assert (loaded.width, loaded.height) == (40, 20) and loaded.data == body
        small = ImagePolicy(max_bytes=1024, allow_networks=ALLOW_127_0_0_2.allow_networks)
        with pytest.raises(InvalidRequest) as info:
            await load(f"http://127.0.0.2:{server.port}/big", policy=small)
        refused(info, "messages[0].content[0].image_url", "limit")
        with pytest.raises(InvalidRequest) as info:
            await load(f"http://127.0.0.2:{server.port}/missing", policy=ALLOW_127_0_0_2)
        refused(info, "messages[0].content[0].image_url", "404")
    finally:
        server.close()
