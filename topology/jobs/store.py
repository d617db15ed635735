"""The object store a job reads from and writes to: S3 (any S3-compatible server) or local files.

One small interface over `obstore <https://developmentseed.org/obstore/>`_ (the Rust
``object_store`` crate's Python bindings) for both kinds, so the runner never asks which it has:
list a prefix, get (whole or byte ranges), put, **put only if absent** (S3 ``If-None-Match: *``; a hard link onto the
final name for local files, which fails when it exists), delete.

Why obstore and not boto3: the topology service also imports the ``kubernetes`` client, whose
37.x releases need ``python-dateutil>=3`` while botocore 1.44 needs ``<3``; obstore depends on
neither, brings conditional writes on S3 and local files behind one call, and is kept (it is
what the Rust ``object_store`` crate's users get in Python).

Errors become :class:`StoreError` subclasses whose message says what to change: a bucket that
does not exist, keys the store refuses, a store that does not answer.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import LocalStore, S3Store

from topology.jobs.aws import AwsSettings, NoCredentials, aws_settings
from topology.jobs.locations import Location

#: Retries of one call before it is an error (the library backs off between them).
RETRIES = 3
RETRY_TIMEOUT_S = 30
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "120s"
#: A local file store's half-written file (``name#123``), left by a writer that died.
STAGING_RE = re.compile(r"#\d+$")


class StoreError(RuntimeError):
    """The store refused or failed a call; the message says what to change."""


class BucketMissing(StoreError):
    """The bucket (or, for local files, the directory) does not exist."""


class AccessDenied(StoreError):
    """The store refused the credentials or the operation."""


class StoreUnavailable(StoreError):
    """The store did not answer, or answered with an error worth retrying later."""


class ObjectMissing(StoreError):
    """No object has this key."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    modified: float  # seconds since the epoch


class Store:
    """A bucket (or the local file system) addressed by keys."""

    def __init__(self, backend: Any, name: str, *, local_root: Path | None = None) -> None:
        self._backend = backend
        #: ``s3://bucket`` or ``file://``, for messages.
        self.name = name
        self._local_root = local_root

    @property
    def is_local(self) -> bool:
        return self._local_root is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, page by page (never all held)."""
        if self._local_root is not None and not (self._local_root / prefix).parent.exists():
            return
        try:
            for page in obstore.list(self._backend, prefix=prefix or None, chunk_size=1000):
                for meta in page:
                    yield ObjectInfo(key=meta["path"], size=int(meta["size"]),
                                     modified=_epoch(meta["last_modified"]))
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"list {prefix!r}") from None

    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectMissing when there is none."""
        try:
            return bytes(obstore.get(self._backend, key).bytes())
        except FileNotFoundError:
            raise ObjectMissing(f"{self.name}/{key}: no such object") from None
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"get {key!r}") from None

    def get_ranges(self, key: str, starts: Sequence[int], lengths: Sequence[int]
                   ) -> builtins.list[memoryview]:
        """Byte ranges of the object (ranged GETs, near ones merged into one request): a
        part of a huge object without holding the whole. ObjectMissing when there is none."""
        try:
            parts = obstore.get_ranges(self._backend, key, starts=list(starts),
                                       lengths=list(lengths))
        except FileNotFoundError:
            raise ObjectMissing(f"{self.name}/{key}: no such object") from None
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"get {len(starts)} range(s) of {key!r}") from None
        return [memoryview(part) for part in parts]

    def size(self, key: str) -> int:
        """The object's size in bytes; ObjectMissing when there is none."""
        try:
            return int(obstore.head(self._backend, key)["size"])
        except FileNotFoundError:
            raise ObjectMissing(f"{self.name}/{key}: no such object") from None
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"head {key!r}") from None

    def exists(self, key: str) -> bool:
        """Whether an object has exactly this key."""
        try:
            obstore.head(self._backend, key)
            return True
        except FileNotFoundError:
            return False
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"head {key!r}") from None

    def put(self, key: str, data: bytes) -> None:
        """Writes the object, replacing one that exists (atomically: readers see the old or
        the new bytes, never a part)."""
        try:
            obstore.put(self._backend, key, data)
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"put {key!r}") from None

    def put_new(self, key: str, data: bytes) -> bool:
        """Writes the object only if no object has the key: True when this call wrote it,
        False when one was there (it is left as it was)."""
        try:
            obstore.put(self._backend, key, data, mode="create")
            return True
        except (AlreadyExistsError, PreconditionError):
            return False
        except FileExistsError:
            return False
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"put {key!r}") from None

    def delete(self, keys: Sequence[str]) -> None:
        """Removes the objects (absent ones are fine)."""
        if not keys:
            return
        try:
            if self.is_local:
                for key in keys:
                    with contextlib.suppress(FileNotFoundError):
                        obstore.delete(self._backend, key)
            else:
                obstore.delete(self._backend, list(keys))
        except FileNotFoundError:
            pass
        except (BaseError, OSError) as exc:
            raise self._error(exc, f"delete {len(keys)} object(s)") from None

    def delete_prefix(self, prefix: str) -> int:
        """Removes every object under `prefix`; how many there were."""
        batch: builtins.list[str] = []
        count = 0
        for info in self.list(prefix):
            batch.append(info.key)
            if len(batch) == 1000:
                self.delete(batch)
                count += len(batch)
                batch = []
        self.delete(batch)
        return count + len(batch)

    def sweep_staging(self, prefix: str, older_than_s: float, now: float | None = None) -> int:
        """Local files only: removes the half-written ``name#N`` files under `prefix` that a
        writer which died left behind (the library hides them from listings; a person running
        ``ls`` would not). Returns how many; 0 for S3, where a write is never seen half-done."""
        if self._local_root is None:
            return 0
        root = self._local_root / prefix
        if not root.is_dir():
            return 0
        now = time.time() if now is None else now
        removed = 0
        for directory, _, files in os.walk(root):
            for name in files:
                if not STAGING_RE.search(name):
                    continue
                path = Path(directory) / name
                try:
                    if now - path.stat().st_mtime >= older_than_s:
                        path.unlink()
                        removed += 1
                except OSError:
                    continue
        return removed

    def _error(self, exc: BaseException, what: str) -> StoreError:
        return classify(exc, f"{self.name}: {what}")


def classify(exc: BaseException, where: str) -> StoreError:
    """The library's error as a StoreError a user can act on."""
    text = str(exc)
    head = text.split("\n\nDebug source:", 1)[0]
    if isinstance(exc, PermissionError) or "Permission denied" in head:
        return AccessDenied(f"{where}: permission denied ({_short(head)})")
    if "NoSuchBucket" in head:
        return BucketMissing(f"{where}: the bucket does not exist; create it first or fix the "
                             "bucket name")
    for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied",
                 "InvalidToken", "ExpiredToken", "403 Forbidden"):
        if code in head:
            return AccessDenied(f"{where}: the store refused the credentials ({code}); check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile, or "
                                "the chart's store Secret)")
    return StoreUnavailable(f"{where}: {_short(head)}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def open_store(location: Location, environ: Mapping[str, str] | None = None, *,
               settings: AwsSettings | None = None) -> Store:
    """The store holding `location`: its S3 bucket configured from `environ` (see
    :mod:`topology.jobs.aws`), or the local file system. AccessDenied when no credentials
    can be found."""
    if location.scheme == "file":
        return Store(LocalStore("/"), "file://", local_root=Path("/"))
    if settings is None:
        try:
            settings = aws_settings(os.environ if environ is None else environ)
        except NoCredentials as exc:
            raise AccessDenied(str(exc)) from None
    config: dict[str, Any] = {"region": settings.region, "conditional_put": "etag"}
    if settings.endpoint:
        config["endpoint"] = settings.endpoint
    if settings.access_key_id:
        config["access_key_id"] = settings.access_key_id
        config["secret_access_key"] = settings.secret_access_key
        if settings.session_token:
            config["session_token"] = settings.session_token
    backend = S3Store(
        location.bucket, config=config,  # type: ignore[arg-type]
        client_options={"allow_http": settings.allow_http, "connect_timeout": CONNECT_TIMEOUT,
                        "timeout": REQUEST_TIMEOUT},
        retry_config={"max_retries": RETRIES, "retry_timeout": _seconds(RETRY_TIMEOUT_S)})
    return Store(backend, f"s3://{location.bucket}")


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)
