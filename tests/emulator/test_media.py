"""Generated media: real PNGs and H.264 MP4s, padding to ``media_bytes``, signed URLs, missing encoder."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from typing import TYPE_CHECKING

import imageio_ffmpeg
import pytest
import requests
from PIL import Image

from airflow_provider_cerebraform.emulator import CerebraformEmulator, EmulatorConfig
from airflow_provider_cerebraform.emulator import media as media_module
from airflow_provider_cerebraform.emulator.media import mp4_duration_bytes, render_png, stream_png

from .conftest import Api, assert_error, wait_for

if TYPE_CHECKING:
    from pathlib import Path


def png_chunks(data: bytes) -> list[tuple[bytes, int]]:
    """Walk a PNG, checking every CRC; return (type, length) pairs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, length))
        position += 12 + length
    assert position == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def image_url(api: Api, **payload: object) -> str:
    request_id = api.submit_id("image", **payload)
    api.wait_status("image", request_id, {2})
    return api.result("image", request_id).json()["results"][0]["url"]


@pytest.mark.parametrize(
    ("aspect_ratio", "size"),
    [
        ("1:1", (512, 512)),
        ("16:9", (512, 288)),
        ("9:16", (288, 512)),
        ("4:3", (512, 384)),
        ("21:9", (512, 219)),
    ],
)
def test_png_decodes_at_the_requested_aspect_ratio(
    api: Api, aspect_ratio: str, size: tuple[int, int]
) -> None:
    response = requests.get(image_url(api, aspect_ratio=aspect_ratio), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert int(response.headers["Content-Length"]) == len(response.content)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == size
    assert len(image.getcolors(maxcolors=1 << 16) or ()) > 100  # a visible pattern, not a flat colour


def test_png_pattern_is_seeded_by_the_prompt() -> None:
    assert render_png(64, 32, "a cat") == render_png(64, 32, "a cat")
    assert render_png(64, 32, "a cat") != render_png(64, 32, "a dog")


def test_head_on_media_sends_headers_only(api: Api) -> None:
    url = image_url(api)
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(requests.get(url, timeout=10).content)


def test_media_bytes_pads_to_an_exact_valid_png(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"media_bytes": 300_000})
    response = requests.get(image_url(api, aspect_ratio="1:1"), timeout=10)
    assert int(response.headers["Content-Length"]) == 300_000 == len(response.content)
    chunks = png_chunks(response.content)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"cfPd", b"IEND"]
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size == (512, 512)


def test_media_bytes_below_the_image_size_serves_it_unpadded(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"media_bytes": 100})
    response = requests.get(image_url(api), timeout=10)
    assert [kind for kind, _ in png_chunks(response.content)] == [b"IHDR", b"IDAT", b"IEND"]


def test_large_media_is_streamed_not_held_in_memory(api: Api, emu: CerebraformEmulator) -> None:
    size = 64 * 1024 * 1024
    emu.state.configure({"media_bytes": size})
    url = image_url(api)
    tracemalloc.start()
    try:
        received, crc_tail = 0, b""
        with requests.get(url, stream=True, timeout=30) as response:
            assert int(response.headers["Content-Length"]) == size
            for piece in response.iter_content(256 * 1024):
                received += len(piece)
                crc_tail = (crc_tail + piece)[-12:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert crc_tail == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    assert peak < 16 * 1024 * 1024, peak  # server and client together


def test_padding_splits_into_chunks_that_fit_the_png_length_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_module, "_MAX_CHUNK_DATA", 1000)
    png = render_png(8, 8, "x")
    for extra in (12, 13, 1011, 1012, 1013, 1020, 1024, 1030, 5000):
        data = b"".join(stream_png(png, len(png) + extra))
        assert len(data) == len(png) + extra
        kinds = png_chunks(data)
        assert all(length <= 1000 for kind, length in kinds if kind == b"cfPd")
        Image.open(io.BytesIO(data)).load()


def test_signed_urls_expire_and_reject_tampering(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"url_ttl": 30.0, "time_scale": 30.0, "image_seconds": 0})  # valid 1 real second
    request_id = api.submit_id("image")
    url = api.result("image", request_id).json()["results"][0]["url"]
    assert "exp=" in url and "sig=" in url
    assert requests.get(url, timeout=5).status_code == 200
    base, _, query = url.partition("?")
    exp, sig = (part.split("=", 1)[1] for part in query.split("&"))
    assert_error(requests.get(base, timeout=5), 403, "invalid_signature")
    assert_error(requests.get(f"{base}?exp={int(exp) + 1000}&sig={sig}", timeout=5), 403, "invalid_signature")
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert_error(requests.get(f"{base}?exp={exp}&sig={flipped}", timeout=5), 403, "invalid_signature")
    other = base.replace("-0.png", "-1.png")
    assert_error(requests.get(f"{other}?{query}", timeout=5), 403, "invalid_signature")
    wait_for(lambda: requests.get(url, timeout=5).status_code == 403, timeout=3, interval=0.05)
    assert_error(requests.get(url, timeout=5), 403, "url_expired")
    fresh = api.result("image", request_id).json()["results"][0]["url"]
    assert requests.get(fresh, timeout=5).status_code == 200


def test_unknown_or_unfinished_media_is_404(api: Api, emu: CerebraformEmulator) -> None:
    assert_error(requests.get(emu.url + "/media/nothing.png", timeout=5), 404)
    assert_error(requests.get(emu.url + f"/media/{'0' * 32}-0.png", timeout=5), 404)
    emu.state.configure({"image_seconds": 3600})
    request_id = api.submit_id("image")
    assert_error(requests.get(emu.url + f"/media/{request_id}-0.png", timeout=5), 404)
    assert_error(requests.get(emu.url + f"/media/{request_id}-0.mp4", timeout=5), 404)


@pytest.mark.parametrize(
    ("duration", "aspect_ratio", "size"), [(5, "16:9", (320, 180)), (10, "1:1", (320, 320))]
)
def test_mp4_is_h264_of_the_requested_duration_and_shape(
    api: Api, tmp_path: Path, duration: int, aspect_ratio: str, size: tuple[int, int]
) -> None:
    request_id = api.submit_id("video", duration=duration, aspect_ratio=aspect_ratio)
    api.wait_status("video", request_id, {2})
    (item,) = api.result("video", request_id).json()["results"]
    response = requests.get(item["url"], timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "video/mp4"
    assert int(response.headers["Content-Length"]) == len(response.content)
    data = response.content
    assert mp4_duration_bytes(data) == pytest.approx(duration, abs=0.01)
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: playable while downloading
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    assert f"Duration: 00:00:{duration:02d}.00" in probe.stderr
    assert "h264" in probe.stderr and "yuv420p" in probe.stderr
    assert f"{size[0]}x{size[1]}" in probe.stderr


def test_missing_encoder_fails_the_video_result_with_a_clear_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    config = EmulatorConfig(media_dir=str(tmp_path), video_seconds=0, image_seconds=0)
    with CerebraformEmulator(config) as emulator:
        api = Api(emulator.url)
        request_id = api.submit_id("video")
        assert api.status("video", request_id).json()["status"] == 2
        body = assert_error(api.result("video", request_id), 500, "video_encoder_unavailable")
        assert "emulator" in body["msg"] and "extra" in body["msg"]
        assert_error(
            requests.get(emulator.url + f"/media/{request_id}-0.mp4", timeout=5),
            500,
            "video_encoder_unavailable",
        )
        # The server lives on: images still work.
        assert requests.get(image_url(api), timeout=5).status_code == 200
