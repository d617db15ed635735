"""What a kernel is, as every part of stepchain sees it: the public, stable specification types.

Built-in kernels and plugins are described by the same :class:`KernelSpec`; the registry
(:mod:`native.registry`), the step server, pipeline validation, ``stepchain kernels``, the
console, the OpenAPI schema and ``stepchain submit --tile`` read nothing else. A plugin author
writes one::

    from native import KernelSpec, Param

    VIGNETTE = KernelSpec(
        name="acme.vignette", doc="darkens the corners",
        params=(Param("strength", float, 0.5, "how dark the corners get", 0.0, 1.0),),
        halo=None, not_tileable="the falloff is measured from the whole image's centre",
        function=vignette,
    )

and declares it in the ``stepchain.kernels`` entry-point group (see docs/plugins.md).

Stability: the names and meanings of the fields below, of :class:`Param`'s fields, and the
calling convention of ``function`` are the plugin API; new fields are only ever added with a
default that keeps an existing plugin's behaviour.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

#: Largest side and pixel count any kernel accepts or produces (a 16k x 16k image).
MAX_SIDE = 65_536
MAX_PIXELS = 1 << 28
MAX_THREADS = 256
MAX_PASSES = 1000
SCHEDULES = ("static", "dynamic", "guided")
#: Largest OpenMP chunk (rows a thread takes at a time) a call may ask for.
MAX_CHUNK = 65_536

#: An image's (height, width, channels).
Shape = tuple[int, int, int]
OutputKind = Literal["image", "measure"]
OUTPUT_KINDS: tuple[str, ...] = ("image", "measure")

#: A plugin kernel's name: a namespace and a name, lower case, dot-separated (``acme.denoise``).
#: Built-in names never contain a dot, so a plugin can never shadow one.
PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
#: What a parameter may be called (it becomes a JSON key and a Python keyword).
PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def _short(value: Any) -> str:
    """repr() cut to a readable length: a hostile 400-digit number stays one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class NotTileable(ValueError):
    """A kernel whose result is not local: tiles would not give the untiled result."""


@dataclass(frozen=True)
class Reach:
    """What one kernel needs from a tile: `halo` input pixels on every side, and how its output
    size relates to its input (`scale`, exact; 1 unless the kernel changes the image size)."""

    halo: int
    scale: Fraction = Fraction(1)


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its type, default and allowed range.

    `kind` is ``float``, ``int`` or ``str``; `default` None means "optional, no value" (the
    kernel decides); `minimum`/`maximum` bound numbers (`exclusive_minimum` makes the minimum
    strict); `choices` lists the strings a ``str`` parameter accepts.
    """

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
        """`value` (or the default when None) converted to `kind`; ValueError naming
        ``kernel.param`` and what is allowed otherwise."""
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
        """This parameter as a JSON Schema property (the OpenAPI document, the console forms)."""
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
#: Names a kernel's own parameter may not take: the execution parameters and the output buffer.
RESERVED_PARAM_NAMES = EXEC_PARAM_NAMES | {"out"}

#: A halo: pixels, a function of the validated parameters (pixels or a Reach), or None.
Halo = int | Callable[[Mapping[str, Any]], "int | Reach"] | None


@dataclass(frozen=True)
class KernelSpec:
    """A kernel: its names, parameters, output and tiling behaviour, and the function.

    * `name`: canonical name. Built-ins have plain names (``gaussian_blur``); plugins must be
      namespaced (``acme.denoise``, :data:`PLUGIN_NAME_RE`), and so must their `aliases`.
    * `params`: the kernel's own parameters. Every kernel also takes :data:`EXEC_PARAMS`.
    * `output`: ``"image"`` returns a new image; ``"measure"`` returns
      ``{"labels": {str: str}, "measures": {str: float}}`` and the image passes through
      unchanged (labels drive a step's ``route``).
    * `halo`: how many input pixels an output pixel depends on, on every side: an int, or a
      function of the validated parameters returning an int or a :class:`Reach` (it may raise
      :class:`NotTileable` for parameters that cannot tile). None: not tileable at all, and
      `not_tileable` says why (``stepchain submit --tile`` prints it).
    * `output_shape`: ``(shape, params) -> shape`` of the output for an input `shape`
      (H, W, C) and validated params; None means the same shape as the input. The step server
      budgets memory and sizes the outgoing message with it *before* decoding the image. With
      `output_bound` it is an upper bound (the result may be smaller in H and W, never larger).
    * `resizes`: the output's height/width differ from the input's. A resizing kernel tiles
      only when its halo function returns a :class:`Reach` with the exact scale.
    * `check`: ``(params) -> None``, raises ValueError for combinations of parameters that
      are each valid but not together (``resize`` takes scale or width/height, not both).
    * `releases_gil`: whether `function` releases the GIL while it computes. A kernel that
      holds it serialises every request of its step server (see docs/plugins.md).
    * `function`: ``function(img, *, out=None, threads, schedule, chunk, passes, **params)``.
      `img` is a read-only C-contiguous ``uint8`` H x W x C array (C in 1, 3, 4); `threads`
      (int), `schedule` (``"static"|"dynamic"|"guided"``), `chunk` (int or None) and
      `passes` (int) are this call's execution parameters; `params` are the kernel's own,
      validated, defaults filled in. An image kernel returns a C-contiguous ``uint8``
      H x W x C array of :meth:`shape_for` (writing into `out` when given saves a copy); a
      measure kernel takes no `out` and returns the labels dict. Raise ValueError for inputs
      the kernel refuses (the caller gets INVALID_ARGUMENT); anything else is a bug
      (INTERNAL, naming the kernel and its package).
    """

    name: str
    doc: str
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()
    output: OutputKind = "image"
    halo: Halo = None
    not_tileable: str = ""
    output_shape: Callable[[Shape, Mapping[str, Any]], Shape] | None = None
    output_bound: bool = False
    resizes: bool = False
    check: Callable[[dict[str, Any]], None] | None = None
    releases_gil: bool = True
    function: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    param_names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))

    def validate(self, params: Mapping[str, Any] | None, *,
                 allow_exec: bool = True) -> dict[str, Any]:
        """`params` checked and with defaults filled in; ValueError naming the parameter and
        what is allowed otherwise. With `allow_exec`, threads/schedule/chunk/passes too."""
        given = dict(params or {})
        allowed = self.param_names | (EXEC_PARAM_NAMES if allow_exec else frozenset())
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise ValueError(
                f"{self.name} does not take parameter(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}")
        out: dict[str, Any] = {}
        for p in self.params + (EXEC_PARAMS if allow_exec else ()):
            if p.name in given or p.default is not None:
                value = p.check(self.name, given.get(p.name))
                if value is not None:
                    out[p.name] = value
        if "schedule" in out:
            _split_schedule(self.name, out)
        if self.check is not None:
            self.check(out)
        return out

    def params_json_schema(self) -> dict[str, Any]:
        """JSON Schema of this kernel's `params` object (its own and the execution ones)."""
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {p.name: p.json_schema() for p in self.params + EXEC_PARAMS},
        }

    def shape_for(self, shape: Shape, params: Mapping[str, Any]) -> Shape:
        """The output shape (or its bound, with `output_bound`) for an input `shape` and
        validated `params`; a measure kernel's is its input's."""
        if self.output == "measure" or self.output_shape is None:
            return shape
        oh, ow, oc = self.output_shape(shape, params)
        return int(oh), int(ow), int(oc)

    def reach(self, params: Mapping[str, Any]) -> Reach:
        """The halo and scale of this kernel for validated `params`; NotTileable says why not."""
        if self.halo is None:
            raise NotTileable(self.not_tileable or f"{self.name} declares no halo")
        got = self.halo(params) if callable(self.halo) else self.halo
        reach = got if isinstance(got, Reach) else Reach(int(got))
        if self.resizes and not isinstance(got, Reach):
            raise NotTileable(f"{self.name} changes the image size and its halo declares no "
                              "scale, so tiles would not line up")
        return reach


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


def _split_schedule(kernel: str, p: dict[str, Any]) -> None:
    """Splits 'kind,chunk' into schedule and chunk; a chunk given both ways must agree."""
    kind, chunk = parse_schedule(p["schedule"], where=f"{kernel}.schedule")
    p["schedule"] = kind
    if chunk is not None:
        if p.get("chunk", chunk) != chunk:
            raise ValueError(f"{kernel}.schedule gives chunk {chunk} but {kernel}.chunk is "
                             f"{p['chunk']}; give one")
        p["chunk"] = chunk


def default_threads() -> int:
    """Threads used when a call gives none: OMP_NUM_THREADS if set, else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


def exec_args(params: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(threads, schedule index, chunk rows or 0 for the kernel's own, passes) of validated
    `params`: what a C kernel's binding takes (``sc_exec`` in ``stepchain/kernel.h``)."""
    threads = params.get("threads") or default_threads()
    return (int(threads), SCHEDULES.index(params.get("schedule", "static")),
            int(params.get("chunk") or 0), int(params.get("passes", 1)))
