"""A real Jaeger v2 (all-in-one, in-memory storage) on loopback, built from its Go module by
``make tools`` (tests/tools/jaeger).

- ``make jaeger-up`` / ``make jaeger-down`` run this file as a script: Jaeger on its standard
  ports (OTLP gRPC 4317, OTLP HTTP 4318, query API and UI 16686), recorded in ``out/jaeger``.
- the ``jaeger`` pytest fixture (tests/jaeger_fixtures.py) starts one per test session on free
  ports and stops it at the end.

The configuration is the binary's own all-in-one (OTLP receivers, batch processor, memory
storage, jaeger_query) written out with explicit 127.0.0.1 endpoints and without the extra
receivers and endpoints (Jaeger/Zipkin protocols, sampling, zpages, metrics) stepchain does not
use, so nothing listens beyond what is asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from control_plane import (
    LOOPBACK,
    ROOT,
    die_with_parent,
    free_loopback_ports,
    log_tail,
    process_alive,
    process_start_time,
    tool,
)

STANDARD_PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "query_http": 16686,
                  "query_grpc": 16685, "health": 13133}
START_TIMEOUT_S = 60.0
DEFAULT_DIR = ROOT / "out" / "jaeger"


def config_yaml(ports: dict[str, int], max_traces: int = 100_000) -> str:
    """Jaeger v2's all-in-one pipeline with every endpoint on 127.0.0.1 at `ports`."""
    def at(name: str) -> str:
        return f'"{LOOPBACK}:{ports[name]}"'

    return f"""\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: {at("query_http")}
    grpc:
      endpoint: {at("query_grpc")}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  healthcheckv2:
    use_v2: true
    http:
      endpoint: {at("health")}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {at("otlp_grpc")}
      http:
        endpoint: {at("otlp_http")}

processors:
  batch:
    timeout: 200ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class JaegerError(RuntimeError):
    """Jaeger did not start; the message ends with its log's last lines."""


@dataclass
class Jaeger:
    """One Jaeger process whose config and log live in `workdir`."""

    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    detach: bool = False
    pid: int | None = None
    started: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def query_url(self) -> str:
        """Base URL of the query API and UI (``/api/v3/traces``, ``/search``)."""
        return f"http://{LOOPBACK}:{self.ports['query_http']}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """What a process puts in OTEL_EXPORTER_OTLP_ENDPOINT (OTLP over gRPC)."""
        return f"http://{LOOPBACK}:{self.ports['otlp_grpc']}"

    @property
    def otlp_http_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['otlp_http']}"

    @property
    def log(self) -> Path:
        return self.workdir / "jaeger.log"

    def start(self, *, standard_ports: bool = False) -> None:
        binary = tool("jaeger")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if standard_ports:
            self.ports = dict(STANDARD_PORTS)
        else:
            self.ports = dict(zip(STANDARD_PORTS, free_loopback_ports(len(STANDARD_PORTS)), strict=True))
        config = self.workdir / "jaeger.yaml"
        config.write_text(config_yaml(self.ports))
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), f"--config={config}"], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=self.detach,
                preexec_fn=None if self.detach else die_with_parent)
        self.pid = self._proc.pid
        self.started = process_start_time(self.pid)
        self._save()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(remove=False)
            raise

    def _wait_ready(self) -> None:
        url = f"http://{LOOPBACK}:{self.ports['health']}/status"
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise JaegerError(f"jaeger exited with status {self._proc.returncode}; last "
                                  f"lines of {self.log}:\n{log_tail(self.log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        # The query API answers too (its extension starts before the pipeline).
                        with urllib.request.urlopen(f"{self.query_url}/api/v3/services",
                                                    timeout=2):
                            return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.2)
        raise JaegerError(f"jaeger not ready at {url} after {START_TIMEOUT_S:.0f} s ({last}); "
                          f"last lines of {self.log}:\n{log_tail(self.log)}")

    def stop(self, *, remove: bool = True, timeout_s: float = 10.0) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
        elif self.pid is not None and process_alive(self.pid, self.started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while process_alive(self.pid, self.started) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_alive(self.pid, self.started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        self._proc = None
        self.pid = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def running(self) -> bool:
        return self.pid is not None and process_alive(self.pid, self.started)

    def _save(self) -> None:
        (self.workdir / "state.json").write_text(json.dumps(
            {"pid": self.pid, "started": self.started, "ports": self.ports}, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Jaeger:
        state = json.loads((workdir / "state.json").read_text())
        return cls(workdir=workdir, ports=state["ports"], detach=True, pid=state["pid"],
                   started=state["started"])


@contextlib.contextmanager
def jaeger(workdir: Path) -> Iterator[Jaeger]:
    """A started Jaeger on free ports, stopped (and its folder removed) on exit."""
    server = Jaeger(workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    if (workdir / "state.json").is_file():
        existing = Jaeger.load(workdir)
        if existing.running():
            print(f"jaeger already running (UI {existing.query_url}); `make jaeger-down` "
                  "stops it", file=sys.stderr)
            return 0
        existing.stop()
    server = Jaeger(workdir=workdir, detach=True)
    try:
        server.start(standard_ports=True)
    except (JaegerError, FileNotFoundError) as exc:
        print(f"jaeger-up failed: {exc}", file=sys.stderr)
        return 1
    print(f"jaeger up: OTLP {LOOPBACK}:4317 (gRPC) and :4318 (HTTP), query API and UI "
          f"{server.query_url}; `make jaeger-down` stops it", file=sys.stderr)
    print(f"export OTEL_EXPORTER_OTLP_ENDPOINT={server.otlp_grpc_endpoint}")
    return 0


def _down(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    if not (workdir / "state.json").is_file():
        print(f"no jaeger recorded in {workdir}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    server = Jaeger.load(workdir)
    was = server.running()
    server.stop()
    print(f"jaeger {'stopped' if was else 'was not running'}; removed {workdir}",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaeger_server.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="folder of Jaeger's config, log and pid (default: out/jaeger)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Jaeger on the standard ports in the background"
                   ).set_defaults(func=_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=_down)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
