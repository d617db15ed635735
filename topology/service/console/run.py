"""The console's Run: a photo through the pipeline's real entry step, per thread count.

:func:`run_plan` checks what the form asked for (pure), :func:`run_pipeline` sends the
requests over gRPC to the entry step (``stepsvc.client.call``, the path ``stepchain submit``
takes) and :func:`summarize` turns the answers into what the page shows: medians per step and
thread count, the speed-up against one thread and its Amdahl fit (pure).
"""

from __future__ import annotations

import io
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepsvc.limits import DEFAULT_MAX_PASSES
from topology.load.amdahl import fit_parallel_fraction
from topology.service.console.svg import Phases

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
MAX_RUNS = 20
#: Requests one Run may send in all (thread counts x runs).
MAX_REQUESTS = 60
#: Largest photo accepted for a Run.
MAX_UPLOAD_BYTES = 32 << 20
MAX_UPLOAD_PIXELS = 40_000_000
REQUEST_TIMEOUT_S = 120.0


class RunRefused(ValueError):
    """The form asked for something the console does not run; `field` names the form field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def samples() -> list[str]:
    """The bundled sample photos (file names)."""
    if not SAMPLES_DIR.is_dir():
        return []
    names = [p.name for p in SAMPLES_DIR.iterdir()
             if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return sorted(names, key=lambda name: (name.count("-"), name))  # plain photos first


def thread_choices(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the cores of this machine (and the cores themselves)."""
    cores = max(1, cores or os.cpu_count() or 1)
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    out.append(cores)
    return out


@dataclass(frozen=True)
class RunPlan:
    """What one Run sends."""

    image: bytes
    image_name: str
    threads: tuple[int, ...]
    passes: int
    runs: int

    @property
    def requests(self) -> int:
        return len(self.threads) * self.runs


def run_plan(*, image: bytes | None, image_name: str, sample: str | None,
             threads: Sequence[str], passes: str, runs: str,
             cores: int | None = None) -> RunPlan:
    """Checks the Run form; RunRefused names the field that is wrong and what is allowed."""
    if image:
        if len(image) > MAX_UPLOAD_BYTES:
            raise RunRefused("image", f"the photo has {len(image)} bytes; at most "
                                      f"{MAX_UPLOAD_BYTES >> 20} MiB")
        data, name = normalise_photo(image), image_name or "upload"
    elif sample:
        if sample not in samples():
            raise RunRefused("sample", f"no bundled sample {sample!r}; choose one of "
                                       f"{', '.join(samples()) or '(none)'}")
        data, name = (SAMPLES_DIR / sample).read_bytes(), sample
    else:
        raise RunRefused("image", "upload a photo or pick a bundled sample")
    limit = max(thread_choices(cores))
    chosen: list[int] = []
    for text in threads:
        try:
            n = int(text)
        except ValueError:
            raise RunRefused("threads", f"threads must be whole numbers, got {text!r}") from None
        if not 1 <= n <= limit:
            raise RunRefused("threads", f"threads must be 1..{limit} (the cores of this "
                                        f"machine), got {n}")
        if n not in chosen:
            chosen.append(n)
    if not chosen:
        raise RunRefused("threads", "choose at least one thread count")
    n_passes = _bounded("passes", passes, 1, DEFAULT_MAX_PASSES)
    n_runs = _bounded("runs", runs, 1, MAX_RUNS)
    plan = RunPlan(data, name, tuple(sorted(chosen)), n_passes, n_runs)
    if plan.requests > MAX_REQUESTS:
        raise RunRefused("runs", f"{len(chosen)} thread counts x {n_runs} runs = "
                                 f"{plan.requests} requests; at most {MAX_REQUESTS} per Run")
    return plan


def _bounded(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RunRefused(name, f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise RunRefused(name, f"{name} must be {low}..{high}, got {value}")
    return value


def normalise_photo(data: bytes) -> bytes:
    """PNG and JPEG as they are; any other format Pillow reads becomes PNG. RunRefused for
    what is not an image or is too large."""
    from PIL import Image, UnidentifiedImageError

    from stepsvc.frames import codec

    try:
        with Image.open(io.BytesIO(data)) as pil:
            width, height = pil.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise RunRefused("image", f"the photo is {width}x{height}; at most "
                                          f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels")
            if codec.sniff_encoding(data) is not None:
                return data
            out = io.BytesIO()
            pil.convert("RGBA" if "A" in pil.getbands() else "RGB").save(out, "PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, RunRefused):
            raise
        raise RunRefused("image", f"not an image Pillow can read ({exc})") from None


@dataclass
class Answer:
    """One answered request."""

    threads: int
    round_trip_ms: float
    phases: list[Phases]
    labels: dict[str, str] = field(default_factory=dict)
    image_png: bytes = b""
    trace_id: str = ""
    request_id: str = ""


def run_pipeline(entrypoint: str, plan: RunPlan) -> list[Answer]:
    """Sends the plan's requests to the entry step, thread counts in order; every answer.

    A gRPC failure raises grpc.RpcError (its message names the step that failed).
    """
    from stepchain.v1 import step_pb2

    from stepsvc.client import call
    from stepsvc.frames import codec

    encoding = codec.sniff_encoding(plan.image)
    image = step_pb2.Image(data=plan.image, encoding=encoding or codec.PNG)
    answers = []
    with call.connect(entrypoint) as channel:
        for threads in plan.threads:
            for run in range(plan.runs):
                request = call.build_request(image, output_encoding=codec.PNG,
                                             threads=threads, passes=plan.passes)
                result = call.submit(channel, request, timeout=REQUEST_TIMEOUT_S)
                last = threads == plan.threads[-1] and run == plan.runs - 1
                answers.append(answer_of(result.response, threads, result.round_trip_ms,
                                         keep_image=last))
    return answers


def answer_of(response: object, threads: int, round_trip_ms: float, *,
              keep_image: bool) -> Answer:
    """The parts of a ProcessResponse the page shows."""
    timings = getattr(response, "timings", [])
    phases = [Phases(step_id=t.step_id, step_type=t.step_type, queue=t.queue_wait_ms,
                     decode=t.decode_ms, kernel=t.kernel_ms, forward=t.forward_ms,
                     encode=t.encode_ms, total=t.total_ms) for t in timings]
    image = getattr(response, "image", None)
    return Answer(threads=threads, round_trip_ms=round_trip_ms, phases=phases,
                  labels=dict(getattr(response, "labels", {})),
                  image_png=bytes(image.data) if keep_image and image is not None else b"",
                  trace_id=str(getattr(response, "trace_id", "")),
                  request_id=str(getattr(response, "request_id", "")))


@dataclass(frozen=True)
class RunSummary:
    """What the Run page shows from all the answers."""

    last: Answer
    #: step label ("#2 deblur") in execution order of the last answer.
    steps: tuple[str, ...]
    #: threads -> step label -> median own time (decode + kernel + encode), ms.
    step_ms: dict[int, dict[str, float]]
    #: threads -> median of the summed kernel times, ms.
    kernels_ms: dict[int, float]
    #: threads -> median round trip, ms.
    round_trip_ms: dict[int, float]
    #: (threads, speed-up of the kernels against 1 thread); empty without a 1-thread run.
    speedups: tuple[tuple[int, float], ...]
    parallel_fraction: float | None


def summarize(answers: Sequence[Answer]) -> RunSummary:
    """Medians per thread count and step, speed-ups against 1 thread, Amdahl fit."""
    if not answers:
        raise ValueError("summarize needs at least one answer")
    by_threads: dict[int, list[Answer]] = {}
    for answer in answers:
        by_threads.setdefault(answer.threads, []).append(answer)
    last = answers[-1]
    steps = tuple(_label(p) for p in last.phases)
    step_ms: dict[int, dict[str, float]] = {}
    kernels: dict[int, float] = {}
    trips: dict[int, float] = {}
    for threads, group in sorted(by_threads.items()):
        own: dict[str, list[float]] = {}
        for answer in group:
            for p in answer.phases:
                own.setdefault(_label(p), []).append(p.decode + p.kernel + p.encode)
        step_ms[threads] = {name: statistics.median(v) for name, v in own.items()}
        kernels[threads] = statistics.median(sum(p.kernel for p in a.phases) for a in group)
        trips[threads] = statistics.median(a.round_trip_ms for a in group)
    speedups: tuple[tuple[int, float], ...] = ()
    if 1 in kernels and kernels[1] > 0:
        speedups = tuple((t, kernels[1] / ms) for t, ms in sorted(kernels.items()) if ms > 0)
    fit = fit_parallel_fraction(speedups) if len(speedups) > 1 else None
    return RunSummary(last=last, steps=steps, step_ms=step_ms, kernels_ms=kernels,
                      round_trip_ms=trips, speedups=speedups, parallel_fraction=fit)


def _label(p: Phases) -> str:
    return f"#{p.step_id} {p.step_type}"
