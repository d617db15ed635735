"""The one place that names kernels: canonical names, aliases and parameter schemas.

Everything that accepts a kernel name or parameters (the Python API, the step server, the
pipeline JSON model) validates through :func:`canonical_name` and :func:`validate_params`, so a
bad value is rejected with the same message wherever it enters.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Largest side and pixel count any kernel accepts or produces (a 16k x 16k image).
MAX_SIDE = 65_536
MAX_PIXELS = 1 << 28
MAX_THREADS = 256
MAX_PASSES = 1000
SCHEDULES = ("static", "dynamic", "guided")
#: Largest OpenMP chunk (rows a thread takes at a time) a call may ask for.
MAX_CHUNK = 65_536


def _short(value: Any) -> str:
    """repr() cut to a readable length: a hostile 400-digit number stays one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its type, default and allowed range."""

    name: str
    kind: type  # float, int or str
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    #: JSON Schema pattern of a string parameter checked by its own parser (schedule)
    pattern: str | None = None

    def check(self, kernel: str, value: Any) -> Any:
        where = f"{kernel}.{self.name}"
        if value is None:
            if self.default is None:
                return None
            value = self.default
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{where} must be a string, got {type(value).__name__}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        # numbers.Real admits NumPy scalars too; bool (and numpy.bool_) is no number here
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where} must be a number, got {type(value).__name__} {_short(value)}")
        try:
            as_float = float(value)
        except OverflowError:  # an int too large for a double
            raise ValueError(f"{where} is out of range, got {_short(value)}") from None
        if not math.isfinite(as_float):
            raise ValueError(f"{where} must be a finite number, got {_short(value)}")
        if self.kind is int:
            if not as_float.is_integer():
                raise ValueError(f"{where} must be an integer, got {_short(value)}")
            value = int(value) if isinstance(value, numbers.Integral) else int(as_float)
        else:
            value = as_float
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.exclusive_minimum else value < lo):
            op = ">" if self.exclusive_minimum else ">="
            raise ValueError(f"{where} must be {op} {lo:g}, got {_short(value)}")
        if hi is not None and value > hi:
            raise ValueError(f"{where} must be <= {hi:g}, got {_short(value)}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"description": self.doc}
        if self.kind is str:
            schema["type"] = "string"
            if self.choices:
                schema["enum"] = list(self.choices)
            if self.pattern:
                schema["pattern"] = self.pattern
        else:
            schema["type"] = "integer" if self.kind is int else "number"
            if self.minimum is not None:
                key = "exclusiveMinimum" if self.exclusive_minimum else "minimum"
                schema[key] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class KernelSpec:
    """A kernel: canonical name, aliases, parameters, and whether it returns an image."""

    name: str
    doc: str
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()
    #: "image" kernels return a new array; "measure" kernels (classify) return labels and pass
    #: the image through unchanged.
    output: str = "image"
    param_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))


def _sigma(default: float | None, doc: str) -> Param:
    return Param("sigma", float, default, doc, 0.0, 100.0, exclusive_minimum=True)


_RADIUS = Param("radius", int, None, "kernel half-width in pixels (default ceil(3 sigma))", 1, 300)

#: Parameters every kernel takes: this call's OpenMP team size, loop schedule and repeat count.
EXEC_PARAMS: tuple[Param, ...] = (
    Param("threads", int, None, "OpenMP threads for this call (default: OMP_NUM_THREADS or all cores)",
          1, MAX_THREADS),
    Param("schedule", str, "static",
          "OpenMP loop schedule: static, dynamic or guided, optionally with a chunk size in rows "
          "('dynamic,16')", pattern=r"^\s*(static|dynamic|guided)\s*(,\s*[0-9]+\s*)?$"),
    Param("chunk", int, None,
          "rows per OpenMP chunk (for guided: the smallest chunk); default: the kernel's own, "
          "sized to ~64K samples", 1, MAX_CHUNK),
    Param("passes", int, 1, "compute the kernel this many times (heavier on purpose; same result)",
          1, MAX_PASSES),
)
EXEC_PARAM_NAMES = frozenset(p.name for p in EXEC_PARAMS)

KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("identity", "copies the image; measures transport overhead"),
        KernelSpec("grayscale", "ITU-R BT.601 luma; returns one channel"),
        KernelSpec(
            "gaussian_blur",
            "separable Gaussian blur, replicate border",
            (_sigma(None, "standard deviation in pixels (default 2, or from radius)"), _RADIUS),
            aliases=("blur",),
        ),
        KernelSpec(
            "sharpen",
            "unsharp mask: img + amount * (img - gaussian(img, sigma))",
            (Param("amount", float, 1.0, "strength of the mask", 0.0, 20.0),
             _sigma(1.0, "blur sigma of the mask"), _RADIUS),
        ),
        KernelSpec("edges", "Sobel gradient magnitude per channel (alpha kept)"),
        KernelSpec(
            "brightness",
            "out = ((in * factor) - 128) * contrast + 128, clamped; alpha kept",
            (Param("factor", float, 1.2, "brightness multiplier", 0.0, 16.0),
             Param("contrast", float, 1.0, "contrast around mid-grey", 0.0, 16.0)),
        ),
        KernelSpec(
            "resize",
            "bilinear or bicubic resampling by scale or to width/height",
            (Param("scale", float, None, "scale factor for both sides (default 2 when no size)",
                   0.0, 16.0, exclusive_minimum=True),
             Param("width", int, None, "output width (height keeps the aspect unless given)", 1,
                   MAX_SIDE),
             Param("height", int, None, "output height (width keeps the aspect unless given)", 1,
                   MAX_SIDE),
             Param("method", str, "bilinear", "interpolation", choices=("bilinear", "bicubic"))),
            aliases=("upscaling",),
        ),
        KernelSpec(
            "deblur",
            "Richardson-Lucy deconvolution with a Gaussian PSF",
            (_sigma(1.5, "PSF standard deviation in pixels"), _RADIUS,
             Param("iterations", int, 10, "Richardson-Lucy iterations", 1, 500)),
        ),
        KernelSpec(
            "classify",
            "measures sharpness, exposure and colourfulness and returns labels; image unchanged",
            (Param("blur_threshold", float, 100.0, "variance of Laplacian below this is 'blurry'",
                   0.0, 1e9),
             Param("dark_threshold", float, 60.0, "mean luma below this is 'dark'", 0.0, 255.0),
             Param("bright_threshold", float, 190.0, "mean luma above this is 'bright'", 0.0, 255.0),
             Param("color_threshold", float, 10.0, "colourfulness below this is 'grayscale'", 0.0,
                   1000.0)),
            aliases=("classifier", "detection"),
            output="measure",
        ),
    )
}

_ALIASES: dict[str, str] = {alias: spec.name for spec in KERNELS.values() for alias in spec.aliases}


def canonical_name(name: str) -> str:
    """Maps a kernel name or alias (case-insensitive) to its canonical name."""
    if not isinstance(name, str):
        raise ValueError(f"kernel type must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in KERNELS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    known = sorted([*KERNELS, *_ALIASES])
    raise ValueError(f"unknown kernel type {name!r}; known types: {', '.join(known)}")


def spec_of(name: str) -> KernelSpec:
    return KERNELS[canonical_name(name)]


def default_threads() -> int:
    """Threads used when a call gives none: OMP_NUM_THREADS if set, else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


def validate_params(name: str, params: Mapping[str, Any] | None, *,
                    allow_exec: bool = True) -> dict[str, Any]:
    """Checks `params` for kernel `name` and returns them with defaults filled in.

    Unknown names, wrong types, NaN and out-of-range values raise ValueError naming the
    parameter and what is allowed. With `allow_exec`, threads/schedule/passes are accepted too.
    """
    spec = spec_of(name)
    params = dict(params or {})
    allowed = spec.param_names | (EXEC_PARAM_NAMES if allow_exec else frozenset())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"{spec.name} does not take parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    out: dict[str, Any] = {}
    for p in spec.params + (EXEC_PARAMS if allow_exec else ()):
        if p.name in params or p.default is not None:
            value = p.check(spec.name, params.get(p.name))
            if value is not None:
                out[p.name] = value
    _check_relations(spec.name, out)
    return out


def parse_schedule(text: str, *, where: str = "schedule") -> tuple[str, int | None]:
    """'dynamic' -> ('dynamic', None); 'dynamic,16' -> ('dynamic', 16); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    kind, sep, chunk_text = text.partition(",")
    kind = kind.strip()
    if kind not in SCHEDULES:
        raise ValueError(f"{where} must be one of {', '.join(SCHEDULES)}, optionally with a "
                         f"chunk size ('dynamic,16'); got {_short(text)}")
    if not sep:
        return kind, None
    chunk_text = chunk_text.strip()
    if not chunk_text.isdigit() or not 1 <= int(chunk_text) <= MAX_CHUNK:
        raise ValueError(f"{where} chunk must be an integer 1..{MAX_CHUNK} after the comma "
                         f"('dynamic,16'); got {_short(text)}")
    return kind, int(chunk_text)


def _check_schedule(kernel: str, p: dict[str, Any]) -> None:
    """Splits 'kind,chunk' into schedule and chunk; a chunk given both ways must agree."""
    if "schedule" not in p:
        return
    kind, chunk = parse_schedule(p["schedule"], where=f"{kernel}.schedule")
    p["schedule"] = kind
    if chunk is not None:
        if p.get("chunk", chunk) != chunk:
            raise ValueError(f"{kernel}.schedule gives chunk {chunk} but {kernel}.chunk is "
                             f"{p['chunk']}; give one")
        p["chunk"] = chunk


def _check_relations(kernel: str, p: dict[str, Any]) -> None:
    _check_schedule(kernel, p)
    if kernel == "classify" and p["dark_threshold"] >= p["bright_threshold"]:
        raise ValueError("classify.dark_threshold must be below classify.bright_threshold")
    if kernel == "resize" and "scale" in p and ("width" in p or "height" in p):
        raise ValueError("resize takes either scale or width/height, not both")


def params_json_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a kernel's `params` object (used in the topology API's OpenAPI)."""
    spec = spec_of(name)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {p.name: p.json_schema() for p in spec.params + EXEC_PARAMS},
    }
