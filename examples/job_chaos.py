"""A job that survives SIGKILLs: the topology service and a worker killed at random moments,
three times, and still exactly one output per input, byte for byte the uninterrupted result.

What it does, all on loopback, cleaned up at the end:

1. starts a real S3 server (SeaweedFS ``weed mini``) and uploads N photographs of mixed sizes
   (crops of the console's sample photos, JPEG and PNG) to ``s3://photos/chaos/``;
2. starts ``stepchain topology serve`` (local backend) and a 3-step pipeline;
3. runs the job once undisturbed to ``s3://outputs/reference/`` (the bytes to compare with);
4. runs it again to ``s3://outputs/chaos/`` and, at random moments of the first half of the
   job (chosen by the outputs written, so a fast machine does not outrun them), SIGKILLs a
   running worker process and then the service, and starts the service again -- KILLS times.
   The restarted service resumes the job by itself (no request is sent again). A round that
   finds no running worker with work left says so, and the run fails;
5. prints expected, written, duplicated, missing and mismatched, and exits 0 only when the
   job ended ``succeeded`` with written == expected and 0 duplicated, missing, mismatched.

Usage: ``python examples/job_chaos.py [--images 40] [--kills 3] [--seed 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._jobs_harness import ServiceProcess, photos, worker_pids
from bench._s3_server import S3Server
from topology.jobs.locations import Location
from topology.jobs.manifest import JobFiles
from topology.jobs.store import Store, open_store

PIPELINE = {"name": "chaos", "steps": [
    {"type": "gaussian_blur", "params": {"sigma": 1.5}},
    {"type": "sharpen", "params": {"amount": 1.2}},
    {"type": "brightness", "params": {"factor": 1.1}}]}


def outputs(store: Store, prefix: str) -> dict[str, bytes]:
    return {o.key[len(prefix):]: store.get(o.key) for o in store.list(prefix)
            if not o.key[len(prefix):].startswith("_stepchain/")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--passes", type=int, default=4,
                        help="kernel passes per step (a slower job gives the kills room)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    s3 = S3Server(["photos", "outputs"])
    state = Path(tempfile.mkdtemp(prefix="stepchain-chaos-"))
    env = {**os.environ, **s3.env, "STEPCHAIN_STATE_DIR": str(state)}
    service = ServiceProcess(state, env)
    try:
        photos_store = open_store(Location("s3", "photos", ""), s3.env)
        outputs_store = open_store(Location("s3", "outputs", ""), s3.env)
        inputs = photos(args.images, rng)
        for name, data in inputs.items():
            photos_store.put(f"chaos/{name}", data)
        print(f"uploaded {len(inputs)} photographs to s3://photos/chaos/")
        service.start()
        created = service.post("/pipeline", PIPELINE)
        assert created.status_code in (200, 201), created.text
        body = {"pipeline": "chaos", "input": "s3://photos/chaos/", "concurrency": 2,
                "workers": 2, "passes": args.passes}
        reference = service.post("/v1/jobs", {**body, "output": "s3://outputs/reference/"})
        ref = service.wait_end(reference.json()["id"], args.timeout)
        print(f"reference job {ref['id']}: {ref['state']}, {ref['counts']['done']} written")

        job = service.post("/v1/jobs", {**body, "output": "s3://outputs/chaos/"}).json()
        job_id = job["id"]
        print(f"chaos job {job_id}: {job['counts']['total']} inputs")
        files = JobFiles(outputs_store, Location("s3", "outputs", "chaos/"), job_id)
        # Round k's kills fall at a random point of the k-th slice of the job's first half,
        # chosen by progress (outputs in the store), not by time: however fast the machine,
        # each round kills a worker that runs with work left, and the restarted service has
        # the rest to resume.
        span = max(1, len(inputs) // (2 * (args.kills + 1)))
        missed = 0
        for k in range(args.kills):
            target = rng.randint(k * span + 1, (k + 1) * span)
            victim, written_now, why = wait_for_victim(
                outputs_store, files, target, len(inputs), args.timeout, rng)
            if victim is None:
                missed += 1
                print(f"round {k + 1}: no worker to kill: {why}")
            else:
                os.kill(victim, signal.SIGKILL)
                print(f"round {k + 1}: SIGKILL worker pid {victim} "
                      f"({written_now} of {len(inputs)} written)")
            time.sleep(rng.uniform(0.05, 0.3))
            written_now = count_outputs(outputs_store, "chaos/")
            service.kill()
            print(f"round {k + 1}: SIGKILL the topology service; starting it again "
                  f"({written_now} of {len(inputs)} written)")
            service.start()
        final = service.wait_end(job_id, args.timeout)
        reference_out = outputs(outputs_store, "reference/")
        chaos_out = outputs(outputs_store, "chaos/")
        expected = set(reference_out)
        written = len(expected & set(chaos_out))
        duplicated = len(set(chaos_out) - expected)
        missing = len(expected - set(chaos_out))
        mismatched = sum(1 for k in expected & set(chaos_out) if chaos_out[k] != reference_out[k])
        refused = sum(int(w.get("skipped", 0)) for w in _workers(outputs_store, job_id))
        print(f"job {job_id}: {final['state']} after {service.starts - 1} service restart(s)")
        print(f"expected {len(inputs)}, written {written}, duplicated {duplicated}, "
              f"missing {missing}")
        print(f"outputs byte-identical to the uninterrupted run: "
              f"{'yes' if mismatched == 0 and written == len(inputs) else 'NO'} "
              f"({mismatched} differ); second writes refused by the conditional put: {refused}")
        if missed:
            print(f"{missed} of {args.kills} round(s) found no running worker to kill")
        ok = (missed == 0 and final["state"] == "succeeded"
              and written == len(inputs) == len(expected)
              and duplicated == 0 and missing == 0 and mismatched == 0)
        return 0 if ok else 1
    finally:
        service.stop()
        s3.stop()


def count_outputs(store: Store, prefix: str) -> int:
    """Outputs written under `prefix` (the job's own state not counted)."""
    return sum(1 for o in store.list(prefix)
               if not o.key[len(prefix):].startswith("_stepchain/"))


def wait_for_victim(store: Store, files: JobFiles, target: int, total: int, timeout: float,
                    rng: random.Random) -> tuple[int | None, int, str]:
    """Waits until `target` outputs are written and a worker of the job runs with work left;
    returns its pid and the outputs written, or None and why there is none to kill."""
    deadline = time.monotonic() + timeout
    written = 0
    while time.monotonic() < deadline:
        written = count_outputs(store, "chaos/")
        if written >= total or files.final() is not None:
            return None, written, f"the job ended first ({written} of {total} written)"
        if written >= target:
            workers = worker_pids(store, "chaos/", files.job_id)
            if workers:
                return rng.choice(workers), written, ""
        time.sleep(0.05)
    return None, written, (f"none ran within {timeout:.0f} s with work left "
                           f"({written} of {total} written)")


def _workers(store: Store, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(store.get(o.key))
            for o in store.list(f"chaos/_stepchain/{job_id}/workers/")]


if __name__ == "__main__":
    sys.exit(main())
