"""stepchain.v1 messages as bytes: parse the header, view the pixels, build messages around them.

The wire format is protobuf's, unchanged; only how a step reads and writes it differs from the
generated code. A 1080p frame is 6 MB of ``Image.data`` next to a few hundred bytes of header:

* :func:`parse_request` hands every field except the pixels to protobuf (a small copy) and
  returns the pixels as a *view* of the received bytes: no copy of ``Image.data``.
* :func:`allocate_request` builds a forward request whose pixel area is writable, so the
  kernel writes its output straight into the bytes gRPC sends. The bytes are exactly what
  ``ProcessRequest.SerializeToString()`` would give for the same message.
* :func:`response_fields` and :func:`join_response` add this step's timing (and measures,
  trace id) around the downstream step's response bytes without parsing them. Protobuf's merge
  rule makes this exact: a serialized message followed by more serialized fields of the same
  message parses as the merged message (repeated fields concatenate, map entries and singular
  fields: later wins). This step's fields go *before* the downstream bytes, so timings stay in
  execution order and a later classify step's measures win; the trace id goes after, so the
  entry step's wins.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError
from stepchain.v1 import step_pb2

# wire types
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
# field numbers used here (see protos/stepchain/v1/step.proto)
REQUEST_IMAGE = 2
IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_CHANNELS, IMAGE_DATA, IMAGE_ENCODING, IMAGE_SHM = 1, 2, 3, 4, 5, 6
RESPONSE_IMAGE, RESPONSE_MEASURES, RESPONSE_TIMINGS, RESPONSE_TRACE_ID = 2, 4, 5, 6
_MAX_DEPTH = 32


class WireError(ValueError):
    """Bytes that are not a valid stepchain.v1 message (answered with INVALID_ARGUMENT)."""


# -- protobuf wire primitives ---------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """`value` (>= 0, or a negative int64 as 10 bytes) as a protobuf varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; WireError if truncated or over 10 bytes."""
    result = shift = 0
    for i in range(pos, min(end, pos + 10)):
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i + 1
        shift += 7
    raise WireError(f"truncated or overlong varint at byte {pos}")


def key(number: int, wire_type: int) -> bytes:
    """A field's tag bytes."""
    return encode_varint((number << 3) | wire_type)


def len_prefix(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field whose payload is `length` bytes."""
    return key(number, LEN) + encode_varint(length)


def _skip(buf: memoryview, pos: int, end: int, wire_type: int, number: int, depth: int = 0) -> int:
    """The position after a field's value (groups skipped whole), checking every bound."""
    if wire_type == VARINT:
        return decode_varint(buf, pos, end)[1]
    if wire_type == I64:
        new = pos + 8
    elif wire_type == I32:
        new = pos + 4
    elif wire_type == LEN:
        length, pos = decode_varint(buf, pos, end)
        new = pos + length
    elif wire_type == SGROUP:
        if depth >= _MAX_DEPTH:
            raise WireError("groups nested too deeply")
        while True:
            tag, pos = decode_varint(buf, pos, end)
            if tag & 7 == EGROUP:
                if tag >> 3 != number:
                    raise WireError(f"group {number} closed by end-group {tag >> 3}")
                return pos
            pos = _skip(buf, pos, end, tag & 7, tag >> 3, depth + 1)
    else:
        raise WireError(f"field {number} has invalid wire type {wire_type}")
    if new > end:
        raise WireError(f"field {number} runs past the end of the message ({new} > {end})")
    return new


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(number, wire_type, field_start, value_start, value_end) of every field in buf[start:end]."""
    out = []
    pos = start
    while pos < end:
        begin = pos
        tag, pos = decode_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {begin}")
        if wire_type == EGROUP:
            raise WireError(f"unexpected end-group at byte {begin}")
        value_start = pos
        if wire_type == LEN:
            length, value_start = decode_varint(buf, pos, end)
            pos = value_start + length
            if pos > end:
                raise WireError(f"field {number} runs past the end of the message "
                                f"({pos} > {end})")
        else:
            pos = _skip(buf, pos, end, wire_type, number)
        out.append((number, wire_type, begin, value_start, pos))
    return out


# -- requests -------------------------------------------------------------------------------------

@dataclass
class RequestView:
    """A received ProcessRequest: protobuf header, pixels as a view of the received bytes.

    ``header`` is the whole request except ``image.data`` (its image carries width, height,
    channels, encoding and any shared-memory handle). ``data`` views the image bytes in
    ``raw``; it stays valid as long as this object lives. ``error`` is set instead when the
    bytes are not a valid request (the servicer answers INVALID_ARGUMENT with it).
    """

    raw: bytes
    header: step_pb2.ProcessRequest = field(default_factory=step_pb2.ProcessRequest)
    data: memoryview = field(default_factory=lambda: memoryview(b""))
    error: str = ""

    def ByteSize(self) -> int:  # protobuf's name: the metrics interceptor calls it
        return len(self.raw)

    def to_message(self) -> step_pb2.ProcessRequest:
        """The full protobuf message (copies the pixels; for tests and protobuf callers)."""
        msg = step_pb2.ProcessRequest()
        msg.CopyFrom(self.header)
        if len(self.data):
            msg.image.data = bytes(self.data)
        return msg


def parse_request(raw: bytes) -> RequestView:
    """Parses a serialized ProcessRequest without copying ``image.data`` (never raises).

    Fields of ``image`` follow protobuf's merge rules (an image field given twice merges,
    later values win), so the result equals ``ProcessRequest.FromString(raw)``.
    """
    view = RequestView(raw)
    buf = memoryview(raw)
    try:
        header_parts: list[memoryview] = []
        image_parts: list[memoryview] = []
        has_image = False
        data = (0, 0)
        for number, wire_type, begin, vstart, vend in _fields(buf, 0, len(buf)):
            if number != REQUEST_IMAGE:
                header_parts.append(buf[begin:vend])
                continue
            if wire_type != LEN:
                raise WireError(f"field image (2) has wire type {wire_type}, expected 2")
            has_image = True
            for inner, inner_type, ibegin, istart, iend in _fields(buf, vstart, vend):
                if inner == IMAGE_DATA and inner_type == LEN:
                    data = (istart, iend)
                else:
                    image_parts.append(buf[ibegin:iend])
        header = step_pb2.ProcessRequest.FromString(b"".join(header_parts))
        if has_image:
            header.image.MergeFromString(b"".join(image_parts))
    except (WireError, DecodeError) as exc:
        view.error = f"the request is not a valid stepchain.v1.ProcessRequest: {exc}"
        return view
    view.header = header
    view.data = buf[data[0]:data[1]]
    return view


def image_fields(width: int, height: int, channels: int, encoding: int = 0) -> bytes:
    """Image fields 1-3 (and 5) as protobuf serializes them; data (4) goes between 3 and 5."""
    out = b""
    for number, value in ((IMAGE_WIDTH, width), (IMAGE_HEIGHT, height),
                          (IMAGE_CHANNELS, channels)):
        if value:
            out += key(number, VARINT) + encode_varint(value)
    return out


def _encoding_field(encoding: int) -> bytes:
    return key(IMAGE_ENCODING, VARINT) + encode_varint(encoding) if encoding else b""


@dataclass
class OutgoingRequest:
    """A serialized ProcessRequest with a writable pixel area (``pixels``) inside ``payload``."""

    payload: bytes
    pixels: np.ndarray


def allocate_request(header: step_pb2.ProcessRequest, height: int, width: int,
                     channels: int) -> OutgoingRequest:
    """`header` (no image) plus a RAW height x width x channels image, as one bytes object.

    ``pixels`` is a writable H x W x C view of the image bytes inside ``payload``: write the
    frame there, then send ``payload``. Byte-for-byte ``SerializeToString()`` of the same
    message.
    """
    first = step_pb2.ProcessRequest(request_id=header.request_id).SerializeToString()
    rest_msg = step_pb2.ProcessRequest()
    rest_msg.CopyFrom(header)
    rest_msg.request_id = ""
    rest_msg.ClearField("image")
    rest = rest_msg.SerializeToString()
    n = height * width * channels
    inner = image_fields(width, height, channels)
    data_key = len_prefix(IMAGE_DATA, n) if n else b""
    image = len_prefix(REQUEST_IMAGE, len(inner) + len(data_key) + n) + inner + data_key
    payload, area = writable_bytes(len(first) + len(image) + n + len(rest))
    offset = len(first) + len(image)
    area[:offset] = first + image
    area[offset + n:] = rest
    pixels = np.frombuffer(area, dtype=np.uint8, count=n, offset=offset)
    return OutgoingRequest(payload, pixels.reshape(height, width, channels))


# -- responses ------------------------------------------------------------------------------------

def response_bytes(head: step_pb2.ProcessResponse, width: int, height: int, channels: int,
                   encoding: int, data: memoryview | bytes) -> bytes:
    """`head` (request_id, labels, measures, timings, trace_id; no image) with an image around
    `data`, in one copy of the pixels. Byte-for-byte ``SerializeToString()`` of the message."""
    first = step_pb2.ProcessResponse(request_id=head.request_id).SerializeToString()
    rest_msg = step_pb2.ProcessResponse()
    rest_msg.CopyFrom(head)
    rest_msg.request_id = ""
    rest_msg.ClearField("image")
    n = len(data) if isinstance(data, bytes) else data.nbytes
    inner = image_fields(width, height, channels)
    data_key = len_prefix(IMAGE_DATA, n) if n else b""
    tail = _encoding_field(encoding)
    size = len(inner) + len(data_key) + n + len(tail)
    return b"".join((first, len_prefix(RESPONSE_IMAGE, size), inner, data_key, data, tail,
                     rest_msg.SerializeToString()))


def response_image(raw: bytes) -> step_pb2.Image:
    """The merged image header (everything but data) of a serialized response."""
    buf = memoryview(raw)
    parts: list[memoryview] = []
    for number, wire_type, _, vstart, vend in _fields(buf, 0, len(buf)):
        if number == RESPONSE_IMAGE and wire_type == LEN:
            parts += [buf[ib:ie] for inner, _, ib, _, ie in _fields(buf, vstart, vend)
                      if inner != IMAGE_DATA]
    return step_pb2.Image.FromString(b"".join(parts))


def inline_image(before: bytes, downstream: bytes, after: bytes,
                 pixels: memoryview) -> tuple[step_pb2.Image, bytes]:
    """The downstream response with its image's pixels put inline: `before`, every field but
    the image, the image with `pixels` as data, `after` (one copy of the pixels).

    Used when the image came back in this step's reply segment (``Image.shm``); returns the
    merged image header as received so the caller can check it names that segment.
    """
    buf = memoryview(downstream)
    kept: list[memoryview | bytes] = [before]
    image_parts: list[memoryview] = []
    for number, wire_type, begin, vstart, vend in _fields(buf, 0, len(buf)):
        if number != RESPONSE_IMAGE or wire_type != LEN:
            kept.append(buf[begin:vend])
            continue
        image_parts += [buf[ib:ie] for inner, _, ib, _, ie in _fields(buf, vstart, vend)
                        if inner != IMAGE_DATA]
    image = step_pb2.Image.FromString(b"".join(image_parts))
    n = pixels.nbytes
    inner = image_fields(image.width, image.height, image.channels)
    data_key = len_prefix(IMAGE_DATA, n) if n else b""
    tail = _encoding_field(image.encoding)
    size = len(inner) + len(data_key) + n + len(tail)
    kept += [len_prefix(RESPONSE_IMAGE, size), inner, data_key, pixels, tail, after]
    return image, b"".join(kept)


def response_fields(timing: step_pb2.StepTiming, measures: Mapping[str, float]) -> bytes:
    """This step's timing and measures as ProcessResponse fields, to go before the downstream
    response's bytes (see the module docstring)."""
    return step_pb2.ProcessResponse(timings=[timing], measures=measures).SerializeToString()


def trace_id_field(trace_id: str) -> bytes:
    """ProcessResponse.trace_id as bytes to append (empty when there is none)."""
    return step_pb2.ProcessResponse(trace_id=trace_id).SerializeToString()


def join_response(before: bytes, downstream: bytes, after: bytes) -> bytes:
    """The merged response: this step's fields around the downstream response, one copy."""
    return b"".join((before, downstream, after))


@dataclass
class ResponseBytes:
    """A serialized ProcessResponse on its way out (``ByteSize`` for the metrics interceptor)."""

    payload: bytes

    def ByteSize(self) -> int:  # protobuf's name: the metrics interceptor calls it
        return len(self.payload)


def parse_response(raw: bytes) -> step_pb2.ProcessResponse:
    """A merged response as a protobuf message (for protobuf callers; copies the image)."""
    return step_pb2.ProcessResponse.FromString(raw)


# -- writable bytes -------------------------------------------------------------------------------

def _bytes_data_offset() -> int | None:
    """Where a bytes object's characters start (CPython layout), checked on a known object."""
    try:
        offset = bytes.__basicsize__ - 1
        probe = b"stepchain-probe"
        if ctypes.string_at(id(probe) + offset, len(probe)) == probe:
            return offset
    except Exception:  # not CPython: fall back to a copy
        pass
    return None


_DATA_OFFSET = _bytes_data_offset()
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_new_bytes.restype = ctypes.py_object


def writable_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new bytes object of `size` bytes and a writable view of its contents.

    ``PyBytes_FromStringAndSize(NULL, n)`` is CPython's documented way to make a bytes object
    to fill in; it is filled here before anyone else sees it (the returned bytes must not be
    hashed or shared until the view is done with, and the view must not outlive it). gRPC
    sends only ``bytes``, so this is what lets a kernel write its output straight into an
    outgoing message.
    """
    if size == 0:
        return b"", memoryview(bytearray())
    if _DATA_OFFSET is None:  # grpcio runs on CPython only; kept for a clear message
        raise RuntimeError("writable_bytes needs CPython's bytes layout")
    out: bytes = _new_bytes(None, size)
    area = (ctypes.c_char * size).from_address(id(out) + _DATA_OFFSET)
    return out, memoryview(area).cast("B")
