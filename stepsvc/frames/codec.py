"""Images on the wire ↔ NumPy arrays: raw pixels, or PNG/JPEG decoded and encoded with Pillow.

Raw images become zero-copy views of the request bytes. Encoded images are checked against the
pixel limit from their header *before* any pixel is decoded, so a small file claiming a huge
size (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from stepchain.v1 import step_pb2

from native.registry import MAX_PIXELS

RAW = step_pb2.IMAGE_ENCODING_RAW
PNG = step_pb2.IMAGE_ENCODING_PNG
JPEG = step_pb2.IMAGE_ENCODING_JPEG
ENCODING_NAMES: dict[int, str] = {RAW: "RAW", PNG: "PNG", JPEG: "JPEG"}
_PIL_FORMAT: dict[int, str] = {PNG: "PNG", JPEG: "JPEG"}
DEFAULT_JPEG_QUALITY = 90
# Pillow's own bomb check is global state and would refuse before our (configurable, per-step)
# limit could answer with RESOURCE_EXHAUSTED; every path here checks the header size itself.
PILImage.MAX_IMAGE_PIXELS = None

#: zlib level 1: lossless like every level, several times faster than Pillow's default 6.
PNG_COMPRESS_LEVEL = 1


class ImageError(ValueError):
    """The image in a request is malformed (answered with INVALID_ARGUMENT)."""


class PixelLimitError(ImageError):
    """The image is larger than this step accepts (answered with RESOURCE_EXHAUSTED)."""


def encoding_name(encoding: int) -> str:
    """'RAW', 'PNG', 'JPEG' or 'unknown encoding N'."""
    return ENCODING_NAMES.get(encoding, f"unknown encoding {encoding}")


def check_pixels(width: int, height: int, max_pixels: int, *, where: str = "image") -> None:
    """Raises PixelLimitError if width x height exceeds `max_pixels`."""
    if width * height > max_pixels:
        raise PixelLimitError(
            f"{where} is {width}x{height} = {width * height} pixels; this step accepts at most "
            f"{max_pixels} pixels (--max-pixels)")


def decode_image(msg: step_pb2.Image, *, max_pixels: int = MAX_PIXELS,
                 where: str = "image", data: memoryview | bytes | None = None) -> np.ndarray:
    """Returns the pixels of `msg` as an H x W x C uint8 array (read-only for RAW input).

    `data` replaces ``msg.data`` (a view of the received bytes: RAW pixels stay a view).
    Raises ImageError (bad sizes, byte counts, corrupt or truncated files) or PixelLimitError.
    """
    if data is None:
        data = msg.data  # every access to a bytes field makes a new copy: read it once
    if msg.encoding == RAW:
        return _decode_raw(msg, data, max_pixels, where)
    if msg.encoding in _PIL_FORMAT:
        return _decode_file(data, msg.encoding, max_pixels, where)
    raise ImageError(f"{where}.encoding {msg.encoding} is unknown; use RAW, PNG or JPEG")


@dataclass(frozen=True)
class ImageHeader:
    """What an image will cost once decoded, read from its header alone."""

    height: int
    width: int
    channels: int
    #: Peak bytes decoding holds besides the received data (decoder image, conversions, the
    #: array); 0 for RAW, whose pixels are a view of the request.
    decode_bytes: int


def read_header(msg: step_pb2.Image, *, max_pixels: int = MAX_PIXELS, where: str = "image",
                data: memoryview | bytes | None = None) -> ImageHeader:
    """The decoded shape of `msg` and what decoding costs, without decoding a pixel.

    Raises what decode_image raises for a bad header (ImageError, PixelLimitError).
    """
    if data is None:
        data = msg.data
    if msg.encoding == RAW:
        arr_shape = _decode_raw(msg, data, max_pixels, where).shape  # a view: no pixel copied
        return ImageHeader(arr_shape[0], arr_shape[1], arr_shape[2], 0)
    if msg.encoding not in _PIL_FORMAT:
        raise ImageError(f"{where}.encoding {msg.encoding} is unknown; use RAW, PNG or JPEG")
    pil = _open_file(data, msg.encoding, max_pixels, where)
    w, h = pil.size
    mode = pil.mode
    if mode in ("L", "RGB", "RGBA"):
        channels, per_pixel = len(mode), 2 * len(mode)  # decoder buffer + array
    elif mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        channels, per_pixel = 1, 4 + 8 + 8 + 1  # decoder, float64, scaled, uint8
    elif mode == "1":
        channels, per_pixel = 1, 1 + 1 + 1
    elif mode in ("LA", "PA") or (mode == "P" and "transparency" in pil.info):
        channels, per_pixel = 4, 4 + 4 + 4
    else:  # P, CMYK, YCbCr, ...: converted to RGB
        channels, per_pixel = 3, 4 + 3 + 3
    return ImageHeader(h, w, channels, per_pixel * w * h)


def _decode_raw(msg: step_pb2.Image, data: memoryview | bytes, max_pixels: int,
                where: str) -> np.ndarray:
    w, h, c = msg.width, msg.height, msg.channels
    if w == 0 or h == 0:
        raise ImageError(f"{where} is {w}x{h}; RAW images need width >= 1 and height >= 1")
    if c not in (1, 3, 4):
        raise ImageError(f"{where}.channels is {c}; RAW images have 1 (gray), 3 (RGB) or "
                         "4 (RGBA) channels")
    check_pixels(w, h, max_pixels, where=where)
    expected = w * h * c
    if len(data) != expected:
        raise ImageError(
            f"{where}.data has {len(data)} bytes; a RAW {w}x{h}x{c} image needs "
            f"width*height*channels = {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)


def _decode_file(data: memoryview | bytes, encoding: int, max_pixels: int, where: str) -> np.ndarray:
    fmt = _PIL_FORMAT[encoding]
    pil = _open_file(data, encoding, max_pixels, where)
    w, h = pil.size
    try:
        pil.load()
        return _to_array(pil)
    except Exception as exc:
        raise ImageError(f"{where}.data is a damaged {fmt} file ({w}x{h}): {_reason(exc)}") from None


def _open_file(data: memoryview | bytes, encoding: int, max_pixels: int, where: str) -> Any:
    """The file opened lazily (Pillow reads the header only), its size checked."""
    fmt = _PIL_FORMAT[encoding]
    if not data:
        raise ImageError(f"{where}.data is empty; expected a {fmt} file")
    try:
        pil = PILImage.open(io.BytesIO(data), formats=[fmt])
    except Exception as exc:  # Pillow raises several types for unreadable headers
        raise ImageError(f"{where}.data is not a valid {fmt} file: {_reason(exc)}") from None
    w, h = pil.size
    if w == 0 or h == 0:
        raise ImageError(f"{where} ({fmt}) is {w}x{h}; width and height must be >= 1")
    # The header's size is checked before a single pixel is decoded.
    check_pixels(w, h, max_pixels, where=f"{where} ({fmt} header)")
    return pil


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("<_io.BytesIO object at", "<bytes at")


def _to_array(pil: Any) -> np.ndarray:
    mode = pil.mode
    if mode in ("L", "RGB", "RGBA"):
        pass
    elif mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float gray: scale into 8 bits rather than clip
        if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(pil, dtype=np.float64)
            hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
            return np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)[:, :, None]
        pil = pil.convert("L")
    elif mode == "LA" or (mode == "P" and "transparency" in pil.info) or mode == "PA":
        pil = pil.convert("RGBA")
    else:  # P, CMYK, YCbCr, ...
        pil = pil.convert("RGB")
    arr = np.asarray(pil, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def raw_image(arr: np.ndarray) -> step_pb2.Image:
    """`arr` (H x W x C uint8) as a new RAW Image message."""
    msg = step_pb2.Image()
    write_image(msg, arr, RAW)
    return msg


def encode_image(arr: np.ndarray, encoding: step_pb2.ImageEncoding, *,
                 jpeg_quality: int = 0) -> step_pb2.Image:
    """`arr` as a new Image message in `encoding` (RAW, PNG or JPEG)."""
    msg = step_pb2.Image()
    write_image(msg, arr, encoding, jpeg_quality=jpeg_quality)
    return msg


def write_image(msg: step_pb2.Image, arr: np.ndarray, encoding: step_pb2.ImageEncoding, *,
                jpeg_quality: int = 0) -> int:
    """Fills `msg` (e.g. ``response.image``) with `arr` in `encoding`; JPEG drops alpha.

    Returns the byte count of ``msg.data``, so callers can size the message without
    serializing it (upb's ByteSize() serializes the whole message: 0.25 ms per 1080p frame).

    Filling the message in place matters for 1080p images: building a message with an Image
    keyword argument copies the pixels once more than assigning the bytes field does.
    """
    data, c = encode_data(arr, encoding, jpeg_quality=jpeg_quality)
    h, w = arr.shape[0], arr.shape[1]
    msg.width, msg.height, msg.channels, msg.encoding = w, h, c, encoding
    msg.data = data
    return len(data)


def encode_data(arr: np.ndarray, encoding: int, *, jpeg_quality: int = 0) -> tuple[bytes, int]:
    """`arr` as ``Image.data`` bytes in `encoding` and the channel count they hold (JPEG drops
    alpha)."""
    c = arr.shape[2]
    if encoding == RAW:
        data = arr.tobytes()
    elif encoding in _PIL_FORMAT:
        src = arr[:, :, 0] if c == 1 else arr
        if encoding == JPEG and c == 4:
            src, c = arr[:, :, :3], 3  # JPEG has no alpha channel
        pil = PILImage.fromarray(np.ascontiguousarray(src))
        buf = io.BytesIO()
        if encoding == PNG:
            pil.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            pil.save(buf, format="JPEG", quality=jpeg_quality or DEFAULT_JPEG_QUALITY)
        data = buf.getvalue()
    else:
        raise ImageError(f"output_encoding {encoding} is unknown; use RAW, PNG or JPEG")
    return data, c


_ALLOCATOR_TUNED = False
#: malloc arenas of a step process (glibc's default is 8 per core, one per contending thread).
MALLOC_ARENAS = 2
#: Free memory at the top of a heap above this goes back to the kernel.
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Lets glibc reuse freed image-sized buffers instead of returning them to the kernel.

    By default glibc serves every allocation over ~128 KiB-32 MiB with a fresh mmap and unmaps
    it on free, so each 6 MB copy of a 1080p frame (NumPy -> bytes -> protobuf -> gRPC) pays
    thousands of page faults; measured here that turned a 0.7 ms copy into 18-35 ms. Raising
    the mmap threshold keeps such buffers in the heap for reuse.

    Bounded, though: glibc gives every thread that allocates under contention an arena of its
    own (up to 8 per core), and a step has ~100 server threads. Each arena kept the 6 MB frames
    its threads freed, and with a 512 MiB trim threshold never gave any back: the entry step's
    RSS rose at every sample of a steady run (70 -> 406 MiB over 3600 requests). Two arenas
    and a 64 MiB trim threshold keep the reuse and make the RSS flat (`stepchain bench soak`).
    Process-wide and idempotent; returns False where it does not apply (not glibc) or when the
    environment says ``STEPCHAIN_MALLOC_TUNING=off``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("STEPCHAIN_MALLOC_TUNING", "").lower() in ("0", "off", "no", "false"):
        return False  # glibc's defaults: `stepchain bench chain` measures the difference
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8
    ok = (mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1  # glibc's largest allowed value
          and mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1
          and mallopt(m_top_pad, 16 * 1024 * 1024) == 1
          and mallopt(m_arena_max, MALLOC_ARENAS) == 1)
    _ALLOCATOR_TUNED = ok
    return ok


def sniff_encoding(data: bytes) -> step_pb2.ImageEncoding | None:
    """PNG or JPEG from the file's magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    return None


def read_image_file(path: str, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image file Pillow reads, as an H x W x C uint8 array (used by the client)."""
    with PILImage.open(path) as pil:
        check_pixels(pil.size[0], pil.size[1], max_pixels, where=path)
        pil.load()
        return _to_array(pil)
