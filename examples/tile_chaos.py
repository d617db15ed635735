"""The tile-loss demo, inverted: kill replicas while tiles are in flight, lose nothing.

The Redis-queue pipeline this project grew from lost the tiles a worker held when it died.
Here:

1. the local backend starts a pipeline whose entry step is a slow ``gaussian_blur`` (``passes``)
   with 3 replicas, followed by ``sharpen``;
2. a photograph (scikit-image's astronaut, tiled to ``--size``) goes through it as
   ``--tile`` x ``--tile`` tiles, ``--tile-concurrency`` at a time;
3. meanwhile a replica of the blur step is SIGKILLed ``--kills`` times, spread over the job;
   the local backend restarts each on its own port;
4. every tile the dead replica held comes back UNAVAILABLE and is retried (the round_robin
   channel sends it to another replica);
5. prints expected / received / missing / retried, and checks the assembled output equals the
   untiled run of the same image through the same pipeline, byte for byte.

Exits 0 only with ``missing 0`` and an identical output. Usage::

    python examples/tile_chaos.py [--size 1024] [--tile 128] [--kills 4]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data

from stepsvc.client import call
from stepsvc.client.tile_submit import TileJob, describe, reach_of
from stepsvc.frames import codec
from topology.local.backend import LocalBackend
from topology.local.supervisor import process_alive
from topology.pipeline.graph import parse_pipeline

BLUR = {"sigma": 2.0, "passes": 12}
SHARPEN = {"amount": 1.0}


def chaos_pipeline() -> dict[str, object]:
    return {"name": "chaos", "steps": [
        {"type": "gaussian_blur", "params": BLUR, "replicas": 3, "threads": 1},
        {"type": "sharpen", "params": SHARPEN, "threads": 1},
    ]}


def photograph(size: int) -> np.ndarray:
    """The astronaut photograph repeated to size x size (a real photo, any size)."""
    photo = data.astronaut()
    reps = (-(-size // photo.shape[0]), -(-size // photo.shape[1]), 1)
    return np.ascontiguousarray(np.tile(photo, reps)[:size, :size])


def blur_replica_pids(backend: LocalBackend) -> list[int]:
    """Pids of the blur replicas running now (a killed one is back after its restart)."""
    status = backend.status("chaos")
    pids = status.details["pids"]["0"] if status else []
    return [pid for pid in (pids if isinstance(pids, list) else [pids]) if process_alive(pid)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--tile", type=int, default=128, help="tile side (default 128)")
    parser.add_argument("--tile-concurrency", type=int, default=4)
    parser.add_argument("--kills", type=int, default=4, help="replicas to SIGKILL (default 4)")
    args = parser.parse_args(argv)

    image = photograph(args.size)
    with tempfile.TemporaryDirectory(prefix="stepchain-tile-chaos-") as state:
        backend = LocalBackend(Path(state))
        try:
            applied = backend.apply(parse_pipeline(chaos_pipeline()))
            # every entry replica, round_robin: a killed one's tiles go to the others
            target = applied.details.get("entry_target") or applied.entrypoint
            print(f"pipeline chaos: gaussian_blur x3 replicas -> sharpen; entry {target}")
            with call.connect(target) as channel:
                reach = reach_of(describe(channel, 30))
                job = TileJob(channel, reach, args.tile, concurrency=args.tile_concurrency,
                              timeout=60)
                killed: list[int] = []
                rng = random.Random(7)
                # kill points spread over the job, so every kill meets tiles in flight
                kill_at = [(i + 1) * 0.8 / (args.kills + 1) for i in range(args.kills)]

                def progress(done: int, expected: int) -> None:
                    if kill_at and done >= kill_at[0] * expected and done < expected:
                        kill_at.pop(0)
                        alive = blur_replica_pids(backend)
                        if not alive:
                            return
                        pid = rng.choice(alive)
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        print(f"  tile {done}/{expected}: SIGKILL blur replica pid {pid}",
                              flush=True)

                out = Path(state) / "tiled.npy"
                report = job.run(image, out, progress)
                tiled = np.load(out) if out.exists() else None
                # the reference: the same image untiled through the same (healed) pipeline
                reference = call.submit(channel, call.build_request(codec.raw_image(image)),
                                        timeout=120).image_array()
            status = backend.status("chaos")
            restarts = status.steps[0].restarts if status else 0
        finally:
            backend.close()

    missing = report.expected - report.done
    print(f"expected {report.expected}, received {report.done}, missing {missing}, "
          f"retried {report.retried}")
    print(f"killed {len(killed)} blur replica(s); the local backend restarted {restarts}")
    identical = tiled is not None and np.array_equal(tiled, reference)
    print(f"output equals the untiled reference: {'yes' if identical else 'NO'}")
    if report.failed:
        print(report.failures(), file=sys.stderr)
    return 0 if missing == 0 and identical else 1


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.1f} s)")
    sys.exit(code)
