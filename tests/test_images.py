"""Safe image loading: base64, confined paths, guarded URL fetches against a local HTTP server."""

from __future__ import annotations

import base64
import io
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.http import PNG, ImageServer, serve_images
from helpers.models import png
from PIL import Image

import graph.images as images
from graph.contracts import ImageRef
from graph.images import ImageError, ImageLimits, load_image, verify_image

REFUSED = "not a readable file inside the image folder"


LOCAL = ImageLimits(allow_private_hosts=True)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with serve_images() as images_server:
        yield images_server


# -- base64 ------------------------------------------------------------------------------------------------


async def test_base64_image_is_decoded_and_verified() -> None:
    assert await load_image(ImageRef(base64=base64.b64encode(PNG).decode()), ImageLimits()) == PNG


async def test_base64_data_uri_and_line_breaks_are_accepted() -> None:
    encoded = base64.b64encode(PNG).decode()
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))
    assert await load_image(ImageRef(base64="data:image/png;base64," + wrapped), ImageLimits()) == PNG


async def test_invalid_base64_is_refused() -> None:
    with pytest.raises(ImageError, match="not valid base64"):
        await load_image(ImageRef(base64="iVBOR$$$not-base64"), ImageLimits())


async def test_oversized_base64_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match="limit"):
        await load_image(ImageRef(base64=base64.b64encode(PNG).decode()), ImageLimits(max_bytes=16))


async def test_non_image_bytes_are_refused() -> None:
    with pytest.raises(ImageError, match="not a decodable image"):
        await load_image(ImageRef(base64=base64.b64encode(b"GIF89a but not really").decode()), ImageLimits())


async def test_truncated_image_is_refused() -> None:
    with pytest.raises(ImageError, match="not a decodable image"):
        await load_image(ImageRef(base64=base64.b64encode(PNG[: len(PNG) // 2]).decode()), ImageLimits())


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageError, match="pixels"):
        verify_image(png((100, 100)), ImageLimits(max_pixels=5_000))


def test_decompression_bomb_is_refused() -> None:
    # A small file whose header claims far more pixels than Pillow's own bomb threshold.
    bomb_image = Image.new("1", (12_000, 12_000))
    buffer = io.BytesIO()
    bomb_image.save(buffer, "PNG")
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        verify_image(bomb, ImageLimits())


# -- paths -------------------------------------------------------------------------------------------------


async def test_path_inside_base_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    limits = ImageLimits(base_dir=tmp_path)
    assert await load_image(ImageRef(path="a.png"), limits) == PNG
    assert await load_image(ImageRef(path=str(tmp_path / "a.png")), limits) == PNG


async def test_paths_are_refused_without_base_dir(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    with pytest.raises(ImageError, match="paths are disabled"):
        await load_image(ImageRef(path=str(tmp_path / "a.png")), ImageLimits())


async def test_path_outside_base_dir_is_refused(tmp_path: Path) -> None:
    inside = tmp_path / "images"
    inside.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    limits = ImageLimits(base_dir=inside)
    with pytest.raises(ImageError, match=REFUSED):
        await load_image(ImageRef(path="../secret.png"), limits)
    with pytest.raises(ImageError, match=REFUSED):
        await load_image(ImageRef(path=str(tmp_path / "secret.png")), limits)


async def test_symlink_escaping_base_dir_is_refused(tmp_path: Path) -> None:
    inside = tmp_path / "images"
    inside.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageError, match=REFUSED):
        await load_image(ImageRef(path="link.png"), ImageLimits(base_dir=inside))


async def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    limits = ImageLimits(base_dir=tmp_path)
    with pytest.raises(ImageError, match=REFUSED):
        await load_image(ImageRef(path="nope.png"), limits)
    with pytest.raises(ImageError, match=REFUSED):
        await load_image(ImageRef(path="folder"), limits)


async def test_refusals_do_not_reveal_whether_a_server_file_exists(tmp_path: Path) -> None:
    inside = tmp_path / "images"
    inside.mkdir()
    (tmp_path / "exists.png").write_bytes(PNG)
    messages = set()
    for path in ("../exists.png", "../missing.png", str(tmp_path / "exists.png"), "/etc/passwd", "/nope/x"):
        with pytest.raises(ImageError) as refused:
            await load_image(ImageRef(path=path), ImageLimits(base_dir=inside))
        messages.add(str(refused.value))
    assert len(messages) == 1, messages


async def test_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    with pytest.raises(ImageError, match="limit"):
        await load_image(ImageRef(path="a.png"), ImageLimits(base_dir=tmp_path, max_bytes=10))


async def test_text_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("just text")
    with pytest.raises(ImageError, match="not a decodable image"):
        await load_image(ImageRef(path="notes.png"), ImageLimits(base_dir=tmp_path))


# -- URLs --------------------------------------------------------------------------------------------------


async def test_fetch_from_allowed_host(server: ImageServer) -> None:
    assert await load_image(ImageRef(url=server.at("/img.png")), LOCAL) == PNG


async def test_loopback_is_refused_by_default_without_any_request(server: ImageServer) -> None:
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(ImageError, match="loopback, private"):
            await load_image(ImageRef(url=server.at("/img.png", host)), ImageLimits())
    assert server.requests == []


async def test_redirect_is_followed_and_rechecked(server: ImageServer) -> None:
    assert await load_image(ImageRef(url=server.at("/redirect")), LOCAL) == PNG
    assert server.requests == ["/redirect", "/img.png"]


async def test_redirect_loop_is_bounded(server: ImageServer) -> None:
    with pytest.raises(ImageError, match="redirected more than 3"):
        await load_image(ImageRef(url=server.at("/loop")), LOCAL)
    assert len(server.requests) == images.MAX_REDIRECTS + 1


async def test_redirect_to_disallowed_host_is_refused(server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Treat only 127.0.0.1 as "public" so the redirect target 127.0.0.2 plays the private host.
    monkeypatch.setattr(images, "_is_public_address", lambda address: address == ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(ImageError, match=r"127\.0\.0\.2"):
        await load_image(ImageRef(url=server.at("/to-other-host")), ImageLimits())
    assert server.requests == ["/to-other-host"]


async def test_redirect_to_other_scheme_is_refused(server: ImageServer) -> None:
    with pytest.raises(ImageError, match="scheme 'file'"):
        await load_image(ImageRef(url=server.at("/to-file")), LOCAL)


async def test_non_http_scheme_is_refused() -> None:
    with pytest.raises(ImageError, match="scheme 'ftp'"):
        await load_image(ImageRef(url="ftp://example.org/a.png"), ImageLimits())


async def test_declared_size_over_limit_is_refused(server: ImageServer) -> None:
    with pytest.raises(ImageError, match="4096 bytes, over"):
        await load_image(
            ImageRef(url=server.at("/big-declared")), ImageLimits(allow_private_hosts=True, max_bytes=1024)
        )


async def test_streamed_size_over_limit_aborts(server: ImageServer) -> None:
    with pytest.raises(ImageError, match="download aborted"):
        await load_image(
            ImageRef(url=server.at("/big-streamed")), ImageLimits(allow_private_hosts=True, max_bytes=4096)
        )


async def test_http_error_and_non_image_are_refused(server: ImageServer) -> None:
    with pytest.raises(ImageError, match="HTTP 404"):
        await load_image(ImageRef(url=server.at("/missing")), LOCAL)
    with pytest.raises(ImageError, match="not a decodable image"):
        await load_image(ImageRef(url=server.at("/text")), LOCAL)


async def test_slow_server_times_out(server: ImageServer) -> None:
    with pytest.raises(ImageError, match=r"longer than 0\.2 s"):
        await load_image(ImageRef(url=server.at("/slow")), ImageLimits(allow_private_hosts=True, fetch_timeout_s=0.2))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    assert images._is_public_address(ipaddress.ip_address(address)) is public
