"""Input objects as request images, results as output objects: the bytes at both ends of a job.

An input goes to the pipeline as it is when it is PNG or JPEG (the entry step decodes it); a
``.npy`` array (uint8 H x W [x C]) and any other image Pillow reads (TIFF, BMP, WebP, ...) are
decoded here and sent as raw pixels. Anything else is :class:`NotAnImage`: a failure of that
one input, reported with ``INVALID_ARGUMENT``. An output is the last step's PNG or JPEG as it
came back, or a ``.npy`` file for raw pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import UnidentifiedImageError
from stepchain.v1 import step_pb2

from stepsvc.frames import codec
from topology.jobs.locations import output_encoding_of

#: Largest input decoded here (a tiled job's steps only ever see tiles): 2^32 pixels.
MAX_INPUT_PIXELS = 1 << 32
#: The wire encoding a step is asked for, by output encoding.
WIRE_ENCODINGS = {"png": codec.PNG, "jpeg": codec.JPEG, "npy": codec.RAW}


class NotAnImage(ValueError):
    """An input object that no decoder reads (or that cannot be processed as asked)."""


def request_image(key: str, data: bytes) -> step_pb2.Image:
    """The input object as the Image of a request (see the module); NotAnImage otherwise."""
    encoding = codec.sniff_encoding(data)
    if encoding is not None:
        return step_pb2.Image(data=data, encoding=encoding)
    return codec.raw_image(decode_input(key, data))


def decode_input(key: str, data: bytes) -> np.ndarray:
    """The input object as H x W x C uint8 pixels; NotAnImage when it is none."""
    encoding = codec.sniff_encoding(data)
    if encoding is not None:
        try:
            return codec.decode_image(step_pb2.Image(data=data, encoding=encoding),
                                      max_pixels=MAX_INPUT_PIXELS)
        except codec.ImageError as exc:
            raise NotAnImage(f"{key}: {exc}") from None
    if key.lower().endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise NotAnImage(f"{key}: not a NumPy .npy image ({exc})") from None
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (
                arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise NotAnImage(f"{key}: a .npy image must be uint8 H x W or H x W x C with C in "
                             f"1, 3, 4; got {arr.dtype} {arr.shape}")
        return np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None])
    try:
        return codec.read_image_file(io.BytesIO(data),  # type: ignore[arg-type]
                                     max_pixels=MAX_INPUT_PIXELS)
    except UnidentifiedImageError:
        raise NotAnImage(f"{key}: not an image (no decoder recognises its bytes; PNG, JPEG, "
                         "TIFF, BMP, WebP, GIF and .npy are read)") from None
    except Exception as exc:  # Pillow raises many kinds for bytes that are no image
        raise NotAnImage(f"{key}: not an image ({type(exc).__name__}: {exc})") from None


def response_output(image: step_pb2.Image, output_key: str) -> bytes:
    """The pipeline's result as the output object: PNG/JPEG as encoded by the last step, a
    ``.npy`` file for raw pixels."""
    if output_encoding_of(output_key) != "npy":
        return bytes(image.data)
    return npy_bytes(codec.decode_image(image, max_pixels=MAX_INPUT_PIXELS))


def array_output(arr: np.ndarray, output_key: str, jpeg_quality: int = 0) -> bytes:
    """Pixels as the output object, encoded as the last step encodes (same bytes)."""
    encoding = output_encoding_of(output_key)
    if encoding == "npy":
        return npy_bytes(arr)
    data, _ = codec.encode_data(arr, WIRE_ENCODINGS[encoding], jpeg_quality=jpeg_quality)
    return data


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
