"""What is left to do and how far a job is: pure functions of what the store shows.

- :func:`shard` -- worker i of n takes the items at positions i, i+n, i+2n, ... of the snapshot;
- :func:`pending` -- the items of a share that have neither an output nor a failure record;
- :func:`job_progress` -- counts, throughput, time left and the state, from the outputs' write
  times, the failure records, the workers' tallies and the markers, at `now`.

Throughput is the number of outputs written in the last :data:`WINDOW_S` seconds over the
window (over the job's age while it is younger than the window), so it follows a job that
speeds up or slows down; the estimate of the time left is what remains at
that rate, None until there is a rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from topology.jobs.manifest import Item

#: Seconds of recent outputs the throughput is measured over.
WINDOW_S = 30.0
#: Outputs written this long before the job was created still count as this job's (clock skew
#: between the store and the service).
SKEW_S = 2.0


def shard(items: Iterable[Item], index: int, count: int) -> list[Item]:
    """Worker `index`'s share of `count` workers (every count-th item from its index)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker index {index} is not within 0..{count - 1}")
    return [item for item in items if item.position % count == index]


def pending(items: Iterable[Item], outputs: Set[str] | Mapping[str, float],
            failed_inputs: Set[str]) -> list[Item]:
    """The items with neither an output object nor a failure record, in order."""
    return [item for item in items
            if item.output_key not in outputs and item.input_key not in failed_inputs]


@dataclass(frozen=True)
class Progress:
    """How far a job is."""

    state: str
    total: int
    done: int
    failed: int
    retried: int
    #: Outputs per second over the last window (None before the first output of this job).
    throughput: float | None
    #: Seconds left at that throughput (None without a throughput; 0 when nothing is left).
    eta_s: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done - self.failed)


def throughput(times: Sequence[float], created: float, now: float,
               window_s: float = WINDOW_S) -> float | None:
    """Outputs per second from their write times (see the module); None without any."""
    recent = [t for t in times if t >= created - SKEW_S]
    if not recent:
        return None
    if now - created < window_s:  # a young job: everything it wrote over its age
        return len(recent) / max(now - created, 1e-3)
    return sum(1 for t in recent if t >= now - window_s) / window_s


def job_progress(*, total: int, output_times: Mapping[str, float], expected_outputs: Set[str],
                 failed_inputs: int, retried: int, created: float, now: float,
                 final_state: str | None, cancel_requested: bool,
                 started: bool) -> Progress:
    """The job's progress at `now` from what the store shows (see the module).

    `output_times` holds every object under the output prefix; only those of
    `expected_outputs` count as done. The state is the final one once written; else
    ``canceled`` once asked, ``running`` once a worker started or an output exists, else
    ``queued``.
    """
    done_times = [t for key, t in output_times.items() if key in expected_outputs]
    done = len(done_times)
    rate = throughput(done_times, created, now)
    left = max(0, total - done - failed_inputs)
    eta = 0.0 if left == 0 else (left / rate if rate else None)
    if final_state is not None:
        state = final_state
    elif cancel_requested:
        state = "canceled"
    elif started or done or failed_inputs:
        state = "running"
    else:
        state = "queued"
    return Progress(state=state, total=total, done=done, failed=failed_inputs, retried=retried,
                    throughput=rate, eta_s=eta)


def end_state(total: int, done: int, failed: int) -> str | None:
    """``succeeded`` when every input has an output, ``failed`` when the rest failed for good,
    None while inputs are left."""
    if done >= total:
        return "succeeded"
    if done + failed >= total:
        return "failed"
    return None
