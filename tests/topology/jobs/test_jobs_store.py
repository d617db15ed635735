"""The store against a real S3 server (SeaweedFS) and local files: conditional writes, listing,
errors a user can act on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from store_fixtures import bucket_store, unique_prefix

from topology.jobs.locations import Location
from topology.jobs.store import (
    AccessDenied,
    BucketMissing,
    ObjectMissing,
    Store,
    open_store,
)

#: A real S3 server (SeaweedFS) starts for these: seconds, not milliseconds.
pytestmark = pytest.mark.slow

@pytest.fixture(params=["s3", "file"])
def store_and_prefix(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, str]:
    if request.param == "s3":
        env = request.getfixturevalue("s3_env")
        return bucket_store(env, "photos"), unique_prefix("store")
    return open_store(Location("file", "", "")), str(tmp_path).lstrip("/") + "/"


def test_put_new_writes_once_and_leaves_an_existing_object_as_it_was(
        store_and_prefix: tuple[Store, str]) -> None:
    store, prefix = store_and_prefix
    assert store.put_new(prefix + "a/out.png", b"first") is True
    assert store.put_new(prefix + "a/out.png", b"second") is False
    assert store.get(prefix + "a/out.png") == b"first"
    store.put(prefix + "a/out.png", b"replaced")
    assert store.get(prefix + "a/out.png") == b"replaced"


def test_racing_conditional_writers_leave_exactly_one_winner(
        store_and_prefix: tuple[Store, str]) -> None:
    store, prefix = store_and_prefix
    results: list[bool] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        won = store.put_new(prefix + "race.png", f"writer {n}".encode())
        with lock:
            results.append(won)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.get(prefix + "race.png").startswith(b"writer ")


def test_lists_a_prefix_with_sizes_and_deletes_it(store_and_prefix: tuple[Store, str]) -> None:
    store, prefix = store_and_prefix
    for name in ("x/1.png", "x/2.png", "x/sub/3.png", "y.png"):
        store.put(prefix + name, b"12345")
    listed = sorted((o.key[len(prefix):], o.size) for o in store.list(prefix + "x/"))
    assert listed == [("x/1.png", 5), ("x/2.png", 5), ("x/sub/3.png", 5)]
    assert all(abs(o.modified - time.time()) < 120 for o in store.list(prefix))
    assert store.delete_prefix(prefix + "x/") == 3
    assert [o.key for o in store.list(prefix)] == [prefix + "y.png"]
    with pytest.raises(ObjectMissing):
        store.get(prefix + "x/1.png")
    assert not store.exists(prefix + "x/1.png") and store.exists(prefix + "y.png")


def test_a_missing_bucket_and_refused_credentials_say_what_to_fix(
        s3_env: dict[str, str]) -> None:
    with pytest.raises(BucketMissing, match="the bucket does not exist"):
        list(bucket_store(s3_env, "no-such-bucket").list(""))
    wrong = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(AccessDenied, match="refused the credentials"):
        list(bucket_store(wrong, "photos").list(""))
    with pytest.raises(AccessDenied, match="no S3 credentials"):
        bucket_store({"AWS_EC2_METADATA_DISABLED": "true", "HOME": "/nonexistent"}, "photos")


def test_sweeps_half_written_local_files_a_dead_writer_left(tmp_path: Path) -> None:
    store = open_store(Location("file", "", ""))
    prefix = str(tmp_path).lstrip("/") + "/"
    store.put(prefix + "done.png", b"whole")
    stale = tmp_path / "cut.png#7"
    stale.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / "writing.png#8"
    fresh.write_bytes(b"in progress")
    assert [o.key for o in store.list(prefix)] == [prefix + "done.png"]  # never listed
    assert store.sweep_staging(prefix, older_than_s=300) == 1
    assert not stale.exists() and fresh.exists()
