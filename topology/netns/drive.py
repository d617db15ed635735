"""The load a client host sends through a hosted pipeline, and how a test starts it there.

``python -m topology.netns.drive --target IP:PORT --records FILE`` runs inside the client's
namespace (the test process cannot dial into a namespace through gRPC): `--concurrency`
callers each send one request after another, every request with its own deadline, for
`--duration` seconds. Each answer is one JSON line in FILE, written as it comes (a test reads
the file while the load runs): the monotonic start time (CLOCK_MONOTONIC is shared by every
process of the machine, so the test can line it up with the faults it made), milliseconds,
the status code, the message (cut to 1000 characters) and the steps that ran.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import grpc
import numpy as np

from stepsvc.cli_args import image_size
from topology.netns.figures import Record, read_records
from topology.netns.network import Host, Network

#: The longest message a record keeps.
MESSAGE_CHARS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m topology.netns.drive",
                                     description="Closed-loop load on a pipeline; one JSON "
                                                 "line per answer.")
    parser.add_argument("--target", required=True, help="the entry step, IP:PORT")
    parser.add_argument("--records", required=True, type=Path, help="JSON lines out")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--deadline", type=float, default=5.0, help="each request's deadline")
    parser.add_argument("--size", type=image_size, default=(64, 64), help="WIDTHxHEIGHT (RGB)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds each caller waits between two requests")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from stepchain.v1 import step_pb2_grpc

    from stepsvc.client.call import build_request, connect
    from stepsvc.frames import codec

    args = parse_args(argv)
    width, height = args.size
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = codec.raw_image(pixels)
    channel = connect(args.target)
    stub = step_pb2_grpc.StepServiceStub(channel)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    end = time.monotonic() + args.duration
    lock = threading.Lock()
    out = args.records.open("w", encoding="utf-8", buffering=1)

    def caller() -> None:
        while not stop.is_set() and time.monotonic() < end:
            request = build_request(image, request_id=uuid.uuid4().hex)
            start = time.monotonic()
            try:
                response = stub.Process(request, timeout=args.deadline)
                code, message = "OK", ""
                steps = [t.step_id for t in response.timings]
            except grpc.RpcError as err:
                code = err.code().name if err.code() else "UNKNOWN"
                message = (err.details() or "")[:MESSAGE_CHARS]
                steps = []
            line = json.dumps({"start": start, "ms": round((time.monotonic() - start) * 1000, 3),
                               "code": code, "message": message, "steps": steps})
            with lock:
                out.write(line + "\n")
            if args.pause:
                stop.wait(args.pause)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.duration + args.deadline + 5)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop asked while exiting is no error
    out.close()
    channel.close()
    return 0


@dataclass
class Drive:
    """A load driver running inside a host of the network."""

    process: Popen[bytes]
    records_path: Path
    started: float

    @classmethod
    def start(cls, network: Network, host: Host, target: str, records_path: Path, *,
              concurrency: int = 4, duration: float = 10.0, deadline: float = 5.0,
              size: str = "64x64", pause: float = 0.0) -> Drive:
        records_path.write_text("")
        process = network.spawn(
            host, [sys.executable, "-m", "topology.netns.drive", "--target", target,
                   "--records", str(records_path), "--concurrency", str(concurrency),
                   "--duration", str(duration), "--deadline", str(deadline), "--size", size,
                   "--pause", str(pause)],
            log_path=records_path.with_suffix(".log"))
        return cls(process, records_path, time.monotonic())

    def records(self) -> list[Record]:
        """What has been answered so far."""
        return read_records(self.records_path)

    def wait_for(self, count: int, *, code: str = "OK", timeout: float = 30.0) -> list[Record]:
        """Waits until `count` answers with `code` came back (or the driver ended)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if sum(r.code == code for r in records) >= count or self.process.poll() is not None:
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load saw fewer than {count} {code} answers in "
                                   f"{timeout:.0f} s; {len(records)} answers so far; log: "
                                   f"{self.records_path.with_suffix('.log')}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> list[Record]:
        """Asks the driver to stop (requests in flight finish) and waits; all its records."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> list[Record]:
        """Waits for the driver to end; all its records."""
        self.process.wait(timeout=timeout)
        if self.process.returncode != 0:
            log = self.records_path.with_suffix(".log").read_text(errors="replace")
            raise RuntimeError(f"the load driver exited with {self.process.returncode}:\n"
                               f"{log[-2000:]}")
        return self.records()


if __name__ == "__main__":
    sys.exit(main())
