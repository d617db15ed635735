"""The request every load-test user sends: one image, built once per Locust process.

By default the image travels as raw pixels (what steps exchange among themselves, so the
entry step does no decoding); ``--send-encoded`` sends the file's PNG/JPEG bytes instead.
Without ``--image``, a built-in 256×256 RGB test pattern is sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from stepchain.v1 import step_pb2

#: Overrides accepted by the step servers (0 = the step's own setting).
MAX_THREADS = 256
MAX_PASSES = 1000


def pattern_image(size: int = 256) -> np.ndarray:
    """A deterministic RGB pattern (gradients and a checkerboard) with edges and colour."""
    y, x = np.mgrid[0:size, 0:size]
    checker = (((x // 32) + (y // 32)) % 2) * 64
    red = (x * 255 // max(1, size - 1)).astype(np.uint8)
    green = (y * 255 // max(1, size - 1)).astype(np.uint8)
    blue = (checker + 96).astype(np.uint8)
    return np.dstack([red, green, blue]).astype(np.uint8)


def read_pixels(path: Path) -> np.ndarray:
    """The image at ``path`` as H×W×C ``uint8`` with C in {1, 3, 4}."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img: Image.Image = opened
            if img.mode not in ("L", "RGB", "RGBA"):
                keep_alpha = "A" in img.getbands() or "transparency" in img.info
                img = img.convert("RGBA" if keep_alpha else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ValueError(f"--image {path}: no such file") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"--image {path}: not an image Pillow can read") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    return np.ascontiguousarray(pixels)


def build_request(image: str | Path | None = None, *, send_encoded: bool = False,
                  threads: int = 0, passes: int = 0) -> step_pb2.ProcessRequest:
    """The ``ProcessRequest`` users send (without ``request_id``: the entry step makes one).

    Raises ``ValueError`` naming the option for unreadable images or out-of-range overrides.
    """
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"--threads must be between 0 (the step's own) and {MAX_THREADS}, "
                         f"got {threads}")
    if not 0 <= passes <= MAX_PASSES:
        raise ValueError(f"--passes must be between 0 (the step's own) and {MAX_PASSES}, "
                         f"got {passes}")
    request = step_pb2.ProcessRequest(
        overrides=step_pb2.Overrides(threads=threads, passes=passes))
    if send_encoded:
        if image is None:
            raise ValueError("--send-encoded needs --image FILE (a PNG or JPEG file)")
        request.image.CopyFrom(_encoded_image(Path(image)))
        return request
    pixels = pattern_image() if image is None else read_pixels(Path(image))
    height, width, channels = pixels.shape
    request.image.CopyFrom(step_pb2.Image(
        width=width, height=height, channels=channels, data=pixels.tobytes(),
        encoding=step_pb2.IMAGE_ENCODING_RAW))
    return request


def _encoded_image(path: Path) -> step_pb2.Image:
    from PIL import Image, UnidentifiedImageError

    encodings = {"PNG": step_pb2.IMAGE_ENCODING_PNG, "JPEG": step_pb2.IMAGE_ENCODING_JPEG}
    try:
        with Image.open(path) as img:
            fmt = img.format or ""
    except FileNotFoundError as exc:
        raise ValueError(f"--image {path}: no such file") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"--image {path}: not an image Pillow can read") from exc
    if fmt not in encodings:
        raise ValueError(f"--send-encoded: {path} is {fmt or 'an unknown format'}; steps decode "
                         f"only PNG and JPEG (drop --send-encoded to send raw pixels)")
    return step_pb2.Image(data=path.read_bytes(), encoding=encodings[fmt])
