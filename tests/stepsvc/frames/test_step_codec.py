"""Images on the wire: raw views, PNG/JPEG decode and encode, refusal of bad and huge images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from step_fixtures import bomb_png, noisy_image
from stepchain.v1 import step_pb2

from stepsvc.frames import codec


def png_bytes(arr: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_raw_image_round_trips_as_a_zero_copy_view() -> None:
    img = noisy_image(5, 7, 3)
    msg = codec.raw_image(img)
    assert (msg.width, msg.height, msg.channels, msg.encoding) == (7, 5, 3, codec.RAW)
    out = codec.decode_image(msg)
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_decodes_to_the_same_pixels_for_gray_rgb_and_rgba(channels: int) -> None:
    img = noisy_image(9, 11, channels)
    out = codec.decode_image(step_pb2.Image(data=png_bytes(img), encoding=codec.PNG))
    np.testing.assert_array_equal(out, img)


def test_palette_and_sixteen_bit_pngs_decode_to_eight_bit_arrays() -> None:
    pal = PILImage.fromarray(noisy_image(8, 8, 3)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    out = codec.decode_image(step_pb2.Image(data=buf.getvalue(), encoding=codec.PNG))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    deep = PILImage.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    out = codec.decode_image(step_pb2.Image(data=buf.getvalue(), encoding=codec.PNG))
    assert out.shape == (4, 4, 1) and int(out.max()) == 255


def test_jpeg_decodes_close_to_the_original() -> None:
    img = np.full((16, 16, 3), 120, dtype=np.uint8)
    out = codec.decode_image(step_pb2.Image(data=jpeg_bytes(img), encoding=codec.JPEG))
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - 120).max() <= 2


@pytest.mark.parametrize(("data", "encoding", "words"), [
    (b"definitely not an image", codec.PNG, "not a valid PNG"),
    (b"definitely not an image", codec.JPEG, "not a valid JPEG"),
    (b"", codec.PNG, "empty"),
])
def test_garbage_bytes_are_refused_naming_the_format(data: bytes, encoding: int,
                                                     words: str) -> None:
    with pytest.raises(codec.ImageError, match=words):
        codec.decode_image(step_pb2.Image(data=data, encoding=encoding))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused_as_damaged(fmt: str) -> None:
    img = noisy_image(64, 64, 3)
    data = png_bytes(img) if fmt == "PNG" else jpeg_bytes(img)
    encoding = codec.PNG if fmt == "PNG" else codec.JPEG
    with pytest.raises(codec.ImageError, match=f"(damaged|not a valid) {fmt}"):
        codec.decode_image(step_pb2.Image(data=data[: len(data) // 2], encoding=encoding))


def test_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 200
    with pytest.raises(codec.PixelLimitError, match="100000x100000"):
        codec.decode_image(step_pb2.Image(data=data, encoding=codec.PNG))


def test_pixel_limit_is_configurable() -> None:
    msg = step_pb2.Image(data=png_bytes(noisy_image(20, 20, 3)), encoding=codec.PNG)
    with pytest.raises(codec.PixelLimitError, match="at most 100 pixels"):
        codec.decode_image(msg, max_pixels=100)
    raw = codec.raw_image(noisy_image(20, 20, 1))
    with pytest.raises(codec.PixelLimitError):
        codec.decode_image(raw, max_pixels=399)
    assert codec.decode_image(raw, max_pixels=400).shape == (20, 20, 1)


@pytest.mark.parametrize(("fields", "words"), [
    ({"width": 4, "height": 4, "channels": 3, "data": b"\x00" * 47}, "needs width\\*height"),
    ({"width": 4, "height": 4, "channels": 2, "data": b"\x00" * 32}, "channels is 2"),
    ({"width": 0, "height": 4, "channels": 3, "data": b""}, "width >= 1"),
    ({"width": 4, "height": 4, "channels": 3, "data": b"", "encoding": 7}, "encoding 7"),
])
def test_malformed_raw_images_are_refused_saying_what_is_allowed(fields: dict[str, object],
                                                                 words: str) -> None:
    with pytest.raises(codec.ImageError, match=words):
        codec.decode_image(step_pb2.Image(**fields))  # type: ignore[arg-type]


def test_png_output_is_lossless_and_jpeg_output_drops_alpha() -> None:
    rgba = noisy_image(10, 12, 4)
    png = codec.encode_image(rgba, codec.PNG)
    assert (png.width, png.height, png.channels) == (12, 10, 4)
    np.testing.assert_array_equal(codec.decode_image(png), rgba)
    jpeg = codec.encode_image(rgba, codec.JPEG, jpeg_quality=80)
    assert jpeg.channels == 3
    assert codec.decode_image(jpeg).shape == (10, 12, 3)


def test_sniff_encoding_recognises_png_and_jpeg_only() -> None:
    img = noisy_image(4, 4, 3)
    assert codec.sniff_encoding(png_bytes(img)) == codec.PNG
    assert codec.sniff_encoding(jpeg_bytes(img)) == codec.JPEG
    assert codec.sniff_encoding(b"BM....") is None
