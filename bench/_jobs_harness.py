"""What the jobs benchmark and the chaos example share: photographs of mixed sizes, the
topology service as a child process (started again after a kill), its job API."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from stepsvc.ports import free_port
from topology.local.launch import installed_stepchain

SAMPLES = Path(__file__).resolve().parent.parent / "topology" / "service" / "console" / "samples"
TERMINAL = ("succeeded", "failed", "canceled")


def photos(count: int, rng: random.Random, *, smallest: int = 96,
           largest: int = 320) -> dict[str, bytes]:
    """`count` photographs: crops of the console's sample photos, scaled so their sides lie
    between `smallest` and `largest` pixels, alternately JPEG and PNG, named imgNNNN.jpg/png."""
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    out = {}
    for i in range(count):
        src = sources[i % len(sources)]
        side = rng.randint(smallest, largest)
        scale = side / max(src.size)
        scaled = src.resize((max(1, round(src.size[0] * scale)),
                             max(1, round(src.size[1] * scale))), Image.Resampling.BILINEAR)
        arr = np.asarray(scaled)
        h = rng.randint(max(1, arr.shape[0] // 2), arr.shape[0])
        w = rng.randint(max(1, arr.shape[1] // 2), arr.shape[1])
        y, x = rng.randint(0, arr.shape[0] - h), rng.randint(0, arr.shape[1] - w)
        buf = io.BytesIO()
        fmt = "JPEG" if i % 2 else "PNG"
        Image.fromarray(np.ascontiguousarray(arr[y:y + h, x:x + w])).save(buf, format=fmt)
        out[f"img{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"] = buf.getvalue()
    return out


class ServiceProcess:
    """``stepchain topology serve`` (local backend, --no-auth on loopback) as a child."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir, self.env = state_dir, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # One client for every call: a new one per call builds an SSL context each time,
        # which on a busy machine costs more than the call.
        self.client = httpx.Client(base_url=self.url, timeout=300)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        with open(self.state_dir / f"service-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(
                [*installed_stepchain(), "topology", "serve", "--port", str(self.port),
                 "--state-dir", str(self.state_dir), "--no-auth", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the topology service exited with {self.process.returncode}")
            time.sleep(0.2)
        raise RuntimeError(f"the topology service did not answer in {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL, no chance to clean up (its children stop by their lifeline)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> Any:
        return self.client.get(path).json()

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.post(path, json=body)

    def create_pipeline(self, pipeline: dict[str, Any]) -> str:
        """Creates `pipeline`; returns its entry step's host:port."""
        response = self.post("/pipeline", pipeline)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST /pipeline: {response.status_code} {response.text}")
        return str(response.json()["entrypoint"])

    def wait_end(self, job_id: str, timeout: float, poll_s: float = 0.3) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.get(f"/v1/jobs/{job_id}")
                if job["state"] in TERMINAL:
                    return dict(job)
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
        raise RuntimeError(f"job {job_id} did not end within {timeout:.0f} s")


def rss_kb(pid: int) -> int:
    """A process's resident set size (VmRSS), kB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_pids(store: Any, output_prefix: str, job_id: str) -> list[int]:
    """The pids of the job's running workers on this machine: each worker writes its pid into
    its tallies in the job's state (a standby worker's command line names no job)."""
    import json
    import socket

    pids = []
    for info in store.list(f"{output_prefix}_stepchain/{job_id}/workers/"):
        try:
            tallies = json.loads(store.get(info.key))
        except (OSError, ValueError, RuntimeError):
            continue
        pid = int(tallies.get("pid", 0))
        if tallies.get("host") != socket.gethostname() or pid <= 0:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jobs" in cmd and b"run" in cmd:
            pids.append(pid)
    return pids
