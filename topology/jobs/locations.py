"""Where a job reads and writes: ``s3://bucket/prefix/`` and ``file:///dir/`` URIs, output names.

Pure functions. A location is a container (an S3 bucket, or the file system's root) and a key
prefix inside it; ``file:///data/in/`` is the prefix ``data/in/`` of the root ``/``, so both
kinds are addressed the same way, by keys.

An output is named from its input: the input's key relative to the input prefix, under the output
prefix, with the suffix of the output encoding (``photos/a/cat.jpeg`` read from ``photos/`` and
written as PNG to ``out/`` is ``out/a/cat.png``). Names are planned once per job, so two inputs
that would share an output name are refused before anything runs (:func:`output_names`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = ("s3", "file")
#: Keys under this prefix of an output location hold a job's own state, never an output.
STATE_PREFIX = "_stepchain/"
#: S3 bucket names (the rules AWS documents, lenient on dots: MinIO and Ceph allow more).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
#: Output encodings a job may ask for; ``same`` keeps JPEG as JPEG and writes PNG otherwise.
OUTPUT_ENCODINGS = ("same", "png", "jpeg", "npy")
_SUFFIX_OF = {"png": ".png", "jpeg": ".jpg", "npy": ".npy"}
_JPEG_SUFFIXES = (".jpg", ".jpeg")


class LocationInvalid(ValueError):
    """A URI that names no usable location; `field` is the request field it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Location:
    """A container and a key prefix in it (``""`` or ending in ``/``), or one object's key."""

    scheme: str
    #: The S3 bucket; ``""`` for ``file`` (the container is the file system's root).
    bucket: str
    #: Keys start with this. For ``file`` the absolute path without its leading ``/``.
    prefix: str

    @property
    def uri(self) -> str:
        """The location as a URI again (``s3://b/p/``, ``file:///p/``)."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        return f"file:///{self.prefix}"

    @property
    def is_prefix(self) -> bool:
        """True for a prefix (``""`` or ending in ``/``); false for one object's key."""
        return self.prefix == "" or self.prefix.endswith("/")

    def as_prefix(self) -> Location:
        """This location read as a prefix (``a/b`` -> ``a/b/``)."""
        return self if self.is_prefix else Location(self.scheme, self.bucket, self.prefix + "/")

    def key(self, relative: str) -> str:
        """The key of `relative` under this prefix."""
        return self.as_prefix().prefix + relative

    def state_key(self, job_id: str, relative: str = "") -> str:
        """Where job `job_id` keeps `relative` of its own state under this (output) prefix."""
        return self.key(f"{STATE_PREFIX}{job_id}/{relative}")

    def contains(self, other: Location) -> bool:
        """Whether `other`'s keys lie under this prefix (same container)."""
        return (self.scheme == other.scheme and self.bucket == other.bucket
                and other.prefix.startswith(self.as_prefix().prefix))


def parse_location(uri: str, *, field: str) -> Location:
    """`uri` as a Location; LocationInvalid naming `field` and saying what is accepted.

    ``s3://bucket[/prefix]`` and ``file:///absolute/path``; a trailing ``/`` marks a prefix,
    without it the key may name one object (see the store for which it is).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise LocationInvalid(field, "give a location: s3://bucket/prefix/ or file:///dir/")
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise LocationInvalid(field, f"{uri!r}: the scheme must be s3:// (any S3-compatible "
                                     "store) or file:// (a local directory), e.g. "
                                     "s3://photos/in/ or file:///data/in/")
    if parts.query or parts.fragment:
        raise LocationInvalid(field, f"{uri!r}: no query or fragment is allowed; endpoint and "
                                     "region come from AWS_ENDPOINT_URL and AWS_REGION")
    path = unquote(parts.path)
    if scheme == "s3":
        bucket = parts.netloc
        if not BUCKET_RE.match(bucket):
            raise LocationInvalid(field, f"{uri!r}: {bucket!r} is not a bucket name (3 to 63 "
                                         "lower-case letters, digits, dots, hyphens)")
        key = path.lstrip("/")
    else:
        if parts.netloc not in ("", "localhost"):
            raise LocationInvalid(field, f"{uri!r}: a file URI names a local path, "
                                         "file:///absolute/dir/ (three slashes)")
        if not path.startswith("/"):
            raise LocationInvalid(field, f"{uri!r}: the path must be absolute, "
                                         "file:///absolute/dir/")
        bucket = ""
        key = path.lstrip("/")
    _check_key(uri, key, field)
    return Location(scheme, bucket, key)


def _check_key(uri: str, key: str, field: str) -> None:
    segments = key.rstrip("/").split("/") if key else []
    if any(s in ("", ".", "..") for s in segments):
        raise LocationInvalid(field, f"{uri!r}: empty, '.' and '..' path segments are not "
                                     "allowed")
    if STATE_PREFIX.rstrip("/") in segments:
        raise LocationInvalid(field, f"{uri!r}: {STATE_PREFIX!r} holds jobs' own state; "
                                     "choose another prefix")


def relative_key(input_location: Location, key: str) -> str:
    """`key`'s name relative to the input location (its base name for a single object)."""
    if not input_location.is_prefix:
        return posixpath.basename(key)
    return key[len(input_location.prefix):]


def is_input_key(input_location: Location, key: str) -> bool:
    """Whether `key`, listed under the input prefix, is an input: not a directory marker, not
    a job's state (``_stepchain/``), not a hidden file (``.name``) nor a file's staging copy."""
    relative = relative_key(input_location, key)
    if not relative or relative.endswith("/"):
        return False
    parts = relative.split("/")
    return not (parts[0] == STATE_PREFIX.rstrip("/") or any(p.startswith(".") for p in parts))


def output_suffix(input_key: str, encoding: str) -> str:
    """The output file's suffix for an input named `input_key` in `encoding`."""
    if encoding != "same":
        return _SUFFIX_OF[encoding]
    suffix = posixpath.splitext(input_key)[1].lower()
    if suffix in _JPEG_SUFFIXES or suffix == ".npy":
        return posixpath.splitext(input_key)[1]
    return ".png"


def output_encoding_of(output_key: str) -> str:
    """``png``, ``jpeg`` or ``npy``: how the output named `output_key` is encoded."""
    suffix = posixpath.splitext(output_key)[1].lower()
    if suffix in _JPEG_SUFFIXES:
        return "jpeg"
    return "npy" if suffix == ".npy" else "png"


def output_relative(relative: str, encoding: str) -> str:
    """The output's name relative to the output prefix: `relative` with the encoding's suffix."""
    stem = posixpath.splitext(relative)[0] if posixpath.splitext(relative)[1] else relative
    return stem + output_suffix(relative, encoding)


class NameClash(ValueError):
    """Two inputs would write one output."""

    def __init__(self, first: str, second: str, output: str) -> None:
        super().__init__(f"inputs {first!r} and {second!r} would both be written as {output!r}; "
                         "rename one, or choose output_encoding so their suffixes stay apart")
        self.first, self.second, self.output = first, second, output


def output_names(relatives: Iterable[str], encoding: str) -> list[str]:
    """The output name of every input (relative keys, in order); NameClash for the first two
    inputs that would share one."""
    seen: dict[str, str] = {}
    names = []
    for relative in relatives:
        name = output_relative(relative, encoding)
        if name in seen:
            raise NameClash(seen[name], relative, name)
        seen[name] = relative
        names.append(name)
    return names
