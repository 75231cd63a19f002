"""Loading a post's image safely: size limits, a confined folder, and URL fetches that cannot reach inside.

Posts come from anyone, so an image reference is hostile until proven otherwise: a URL may point at the
cloud metadata service or a database on the LAN (SSRF), a path may climb out of the image folder, a tiny
file may decode to gigapixels (decompression bomb). Every check here happens before the costly step it
protects: sizes before reading, addresses at connect time (so a DNS answer cannot change between the check
and the connection), pixel counts before decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx
import structlog
from PIL import Image, UnidentifiedImageError

from graph.contracts import ImageRef

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 3
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")  # JPEG also opens phone MPO files
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ImageLimits:
    """What an image reference may cost. ``base_dir`` None disables ``path`` references altogether."""

    max_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 40_000_000
    fetch_timeout_s: float = 5.0
    allow_private_hosts: bool = False
    base_dir: Path | None = None


class ImageError(ValueError):
    """An image that was refused or could not be read; the message says why and what limit applies."""


async def load_image(ref: ImageRef, limits: ImageLimits) -> bytes:
    """The image's bytes, checked to be a decodable image within ``limits``; raises :class:`ImageError`."""
    if ref.base64:
        data = _decode_base64(ref.base64, limits)
    elif ref.path:
        data = await asyncio.to_thread(_read_path, ref.path, limits)
    elif ref.url:
        data = await _fetch(ref.url, limits)
    else:
        raise ImageError("image reference is empty: give one of url, base64 or path")
    await asyncio.to_thread(verify_image, data, limits)
    return data


def _decode_base64(text: str, limits: ImageLimits) -> bytes:
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ImageError("image data URI must be base64-encoded (data:image/...;base64,...)")
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > limits.max_bytes + 2:
        raise ImageError(f"base64 image decodes to more than the {limits.max_bytes}-byte limit")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageError(f"image base64 is not valid base64: {error}") from error


def _read_path(path: str, limits: ImageLimits) -> bytes:
    if limits.base_dir is None:
        raise ImageError("image paths are disabled: configure an image base folder to allow them")
    base = limits.base_dir.resolve()
    candidate = Path(path)
    candidate = candidate if candidate.is_absolute() else base / candidate
    # One answer for every refusal (missing, outside the folder, a directory, a symlink loop): the warning
    # reaches the poster in the event, and must not tell them whether some file exists on the server.
    refused = ImageError("image path is not a readable file inside the image folder")
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as error:  # RuntimeError: symlink loop
        raise refused from error
    if not resolved.is_relative_to(base) or not resolved.is_file():
        raise refused
    size = resolved.stat().st_size
    if size > limits.max_bytes:
        raise ImageError(f"image file is {size} bytes, over the {limits.max_bytes}-byte limit")
    with resolved.open("rb") as handle:
        data = handle.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:  # the file grew after stat()
        raise ImageError(f"image file is over the {limits.max_bytes}-byte limit")
    return data


def verify_image(data: bytes, limits: ImageLimits) -> None:
    """Raise :class:`ImageError` unless ``data`` decodes as an image of at most ``limits.max_pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    pixels = width * height
                    raise ImageError(f"image is {width}x{height} = {pixels} pixels, over the {limits.max_pixels} limit")
                image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(f"image refused as a decompression bomb: {error}") from error
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(f"not a decodable image ({', '.join(_FORMATS)}): {error}") from error


# -- URL fetching ------------------------------------------------------------------------------------------


def _is_public_address(address: _IPAddress) -> bool:
    """Whether a fetch may connect to ``address``: no loopback, private, link-local, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    )


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses it if any address is not allowed, then dials a checked address."""

    def __init__(self, allow_private_hosts: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private_hosts = allow_private_hosts

    async def _allowed_addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise ImageError(f"image host {host!r} cannot be resolved: {error}") from error
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self._allow_private_hosts:
            for text in addresses:
                if not _is_public_address(ipaddress.ip_address(text.split("%", 1)[0])):
                    raise ImageError(
                        f"image host {host!r} resolves to {text}, a loopback, private, link-local or reserved"
                        " address; such hosts are refused (allow_private_hosts enables them)"
                    )
        if not addresses:
            raise ImageError(f"image host {host!r} has no address")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: Exception | None = None
        for address in await self._allowed_addresses(host, port):
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise ImageError("image fetches over unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with a connection pool that dials through :class:`_GuardedBackend`.

    Checking at connect time covers redirects and DNS rebinding alike; TLS still verifies the host name.
    """

    def __init__(self, allow_private_hosts: bool) -> None:
        super().__init__(retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=4,
            network_backend=_GuardedBackend(allow_private_hosts),
        )


def _check_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as error:
        raise ImageError(f"image URL is not valid: {error}") from error
    if parsed.scheme not in ("http", "https"):
        raise ImageError(f"image URL scheme {parsed.scheme!r} is not allowed; use http or https")
    if not parsed.host:
        raise ImageError("image URL has no host")
    return parsed


async def _fetch(url: str, limits: ImageLimits) -> bytes:
    try:
        async with asyncio.timeout(limits.fetch_timeout_s):
            return await _fetch_following_redirects(url, limits)
    except TimeoutError as error:
        raise ImageError(f"image fetch took longer than {limits.fetch_timeout_s} s") from error


async def _fetch_following_redirects(url: str, limits: ImageLimits) -> bytes:
    transport = _GuardedTransport(limits.allow_private_hosts)
    # identity encoding: a gzip bomb would otherwise inflate far past max_bytes inside one chunk
    headers = {
        "User-Agent": "miko-stream/1 (image fetch)",
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    async with httpx.AsyncClient(
        transport=transport,
        timeout=limits.fetch_timeout_s,
        follow_redirects=False,
        trust_env=False,  # an environment proxy would bypass the address checks
        headers=headers,
    ) as client:
        target = _check_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with client.stream("GET", target) as response:
                    if response.status_code in _REDIRECT_CODES and "location" in response.headers:
                        target = _check_url(urljoin(str(target), response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise ImageError(f"image fetch failed: HTTP {response.status_code} from {target.host}")
                    data = await _read_limited(response, limits.max_bytes)
                    log.debug("image_fetched", host=target.host, bytes=len(data))
                    return data
            except httpx.HTTPError as error:
                raise ImageError(f"image fetch from {target.host} failed: {error!r}") from error
        raise ImageError(f"image URL redirected more than {MAX_REDIRECTS} times")


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(f"image is {declared} bytes, over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > max_bytes:
            raise ImageError(f"image is over the {max_bytes}-byte limit (download aborted)")
        chunks.append(chunk)
    return b"".join(chunks)
