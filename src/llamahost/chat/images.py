"""Image inputs: load (base64 data URL or a fetched URL), validate, and count tokens.

Image handling is where API servers get hurt, so every rule here is explicit:
- the real format is sniffed from the bytes by Pillow, never taken from a MIME type;
- JPEG, PNG, GIF and ICO only; at most ``max_bytes`` each and ``max_images`` per request;
- the pixel count is checked from the header *before* decoding (decompression bombs);
- animated GIFs: the first frame is what a model sees (documented in the README);
- errors name the item's ``image_url`` (``messages[0].content[1].image_url``) and the rule;
- URLs: http/https only; the host is resolved once, every address checked, and the
  connection made to the checked address (with the original Host/SNI), so DNS
  rebinding cannot swap in a private address; redirects are re-checked hop by hop;
  the body is capped while it streams in; one overall timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from ..errors import InvalidRequest
from ..types.chat import ChatMessage, ImageInput
from ..types.images import LoadedImage

if TYPE_CHECKING:
    from ..config import ImagesConfig

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "ICO": "image/x-icon"}

# Pillow warns past Image.MAX_IMAGE_PIXELS (and raises past twice that); our own
# ``max_pixels`` check, which the config keeps at or below it, refuses such images
# first. The warning would only add a log line per refused bomb; the filter is set
# once here rather than per call because catch_warnings is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImagePolicy:
    max_images: int = 9
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    fetch_timeout: float = 10.0
    max_redirects: int = 3
    # Networks an operator explicitly allows URL images from (e.g. an internal CDN).
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, config: ImagesConfig) -> ImagePolicy:
        return cls(
            max_images=config.max_images,
            max_bytes=config.max_bytes,
            max_pixels=config.max_pixels,
            fetch_timeout=config.fetch_timeout,
            max_redirects=config.max_redirects,
            allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in config.allow_private_networks),
        )


def check_count(images: list[ImageInput], policy: ImagePolicy) -> None:
    if len(images) > policy.max_images:
        raise InvalidRequest(
            f"{len(images)} images in one request; at most {policy.max_images} are allowed",
            param=images[policy.max_images].param,
            code="too_many_images",
        )


def validate_bytes(data: bytes, param: str, policy: ImagePolicy) -> LoadedImage:
    if len(data) > policy.max_bytes:
        raise InvalidRequest(
            f"{param}: image is {len(data)} bytes; the limit is {policy.max_bytes} bytes", param=param, code="image_too_large"
        )
    try:
        image = Image.open(io.BytesIO(data))
        # The header gives the size without decoding any pixels.
        width, height = image.size
        if width * height > policy.max_pixels:
            raise InvalidRequest(
                f"{param}: image is {width}x{height} = {width * height} pixels; the limit is "
                f"{policy.max_pixels} pixels",
                param=param,
                code="image_too_many_pixels",
            )
        if image.format not in ALLOWED_FORMATS:
            raise InvalidRequest(
                f"{param}: image format {image.format} is not allowed; use JPEG, PNG, GIF or ICO",
                param=param,
                code="invalid_image_format",
            )
        frames = getattr(image, "n_frames", 1)
        image.load()  # decode the first frame fully: truncated or corrupt data fails here
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fired while reading the header (far over our limit).
        raise InvalidRequest(
            f"{param}: image has too many pixels; the limit is {policy.max_pixels} pixels ({exc})",
            param=param,
            code="image_too_many_pixels",
        ) from None
    except Exception:
        raise InvalidRequest(
            f"{param}: not a readable image (JPEG, PNG, GIF or ICO expected)", param=param, code="invalid_image_format"
        ) from None
    return LoadedImage(data, ALLOWED_FORMATS[image.format], width, height, frames, param)


def decode_data_url(url: str, param: str, policy: ImagePolicy) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest(f"{param}: data URLs must be base64 ('data:image/png;base64,...')", param=param)
    # base64 inflates by 4/3; refuse before decoding something far too large.
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise InvalidRequest(
            f"{param}: image is larger than the limit of {policy.max_bytes} bytes", param=param, code="image_too_large"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param}: invalid base64 in data URL", param=param) from None


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: ImagePolicy) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in policy.allow_networks):
        return False
    return not address.is_global or address.is_multicast


async def _resolve_checked(host: str, port: int, param: str, policy: ImagePolicy) -> str:
    """Resolve ``host`` once; refuse if ANY address is not public (unless allowed)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"{param}: cannot resolve image host {host!r}", param=param, code="image_fetch_failed") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if _forbidden(address, policy):
            raise InvalidRequest(
                f"{param}: image URL host {host!r} resolves to a non-public address ({address}); refused",
                param=param,
                code="image_url_forbidden",
            )
    return str(addresses[0])


async def fetch_url(url: str, param: str, policy: ImagePolicy, client: httpx.AsyncClient) -> bytes:
    async def fetch() -> bytes:
        current = url
        for _ in range(policy.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidRequest(f"{param}: image URLs must be http or https", param=param, code="image_url_forbidden")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await _resolve_checked(parts.hostname, port, param, policy)
            # Connect to the address that was checked, not to whatever a second lookup says.
            pinned_host = f"[{address}]" if ":" in address else address
            pinned = parts._replace(netloc=f"{pinned_host}:{port}").geturl()
            host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            request = client.build_request(
                "GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": parts.hostname}
            )
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise InvalidRequest(f"{param}: redirect without a location", param=param, code="image_fetch_failed")
                    current = urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"{param}: fetching the image failed with HTTP {response.status_code}",
                        param=param,
                        code="image_fetch_failed",
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise InvalidRequest(
                        f"{param}: image is {declared} bytes; the limit is {policy.max_bytes} bytes",
                        param=param,
                        code="image_too_large",
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise InvalidRequest(
                            f"{param}: image is larger than the limit of {policy.max_bytes} bytes",
                            param=param,
                            code="image_too_large",
                        )
                return bytes(body)
            finally:
                await response.aclose()
        raise InvalidRequest(f"{param}: too many redirects", param=param, code="image_fetch_failed")

    try:
        return await asyncio.wait_for(fetch(), policy.fetch_timeout)
    except TimeoutError:
        raise InvalidRequest(
            f"{param}: fetching the image took longer than {policy.fetch_timeout:g} s", param=param, code="image_fetch_failed"
        ) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{param}: fetching the image failed: {exc}", param=param, code="image_fetch_failed") from None


def _decode_and_validate(url: str, param: str, policy: ImagePolicy) -> LoadedImage:
    return validate_bytes(decode_data_url(url, param, policy), param, policy)


async def load_images(images: list[ImageInput], policy: ImagePolicy) -> list[LoadedImage]:
    """Load and validate every image of a request, in order; the first violation is a 400
    naming the item's ``image_url``."""
    check_count(images, policy)
    loaded = []
    # trust_env=False: an HTTP(S)_PROXY in the environment would make the proxy, not
    # the checked address, the peer; redirects are followed by hand, each one checked.
    async with httpx.AsyncClient(follow_redirects=False, timeout=policy.fetch_timeout, trust_env=False) as client:
        for image in images:
            param = f"{image.param}.image_url"
            if image.url.startswith("data:"):
                # Decoding megabytes of base64 and the image header: off the event loop.
                loaded.append(await asyncio.to_thread(_decode_and_validate, image.url, param, policy))
            else:
                data = await fetch_url(image.url, param, policy, client)
                loaded.append(await asyncio.to_thread(validate_bytes, data, param, policy))
    return loaded


async def attach_images(messages: list[ChatMessage], policy: ImagePolicy) -> list[ChatMessage]:
    """``messages`` with every image loaded and validated (``ImageInput.loaded`` set)."""
    images = [image for message in messages for image in message.images]
    if not images:
        return messages
    loaded = iter(await load_images(images, policy))
    return [
        replace(message, images=tuple(replace(image, loaded=next(loaded)) for image in message.images))
        if message.images
        else message
        for message in messages
    ]
