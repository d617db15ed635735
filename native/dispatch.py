"""Calling a kernel by name: built-ins straight into their binding, plugins through their contract.

A plugin's function is someone else's code, so :func:`run` holds it to its specification: it
gets validated parameters and a read-only input, and what it returns must be what it declared
(``uint8``, H x W x C of the declared shape or within the declared bound, or a labels dict for a
measure kernel). A plugin that breaks the contract or raises anything but ValueError raises
:class:`PluginError` naming the kernel and its package (the step server answers INTERNAL); a
ValueError it raises is re-raised naming it too (INVALID_ARGUMENT: the plugin refused the input).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from native.builtins import check_size
from native.kernels import FUNCTIONS, as_image
from native.registry import Entry, entry
from native.spec import Shape, default_threads

#: Bounds on what a measure kernel returns (the wire bounds a request's labels too).
MAX_LABELS = 32
MAX_LABEL_CHARS = 256


class PluginError(RuntimeError):
    """A plugin kernel that raised or broke its declared contract (a bug in the plugin)."""


def run(name: str, img: Any, **params: Any) -> Any:
    """Runs kernel `name` (canonical or alias, built-in or plugin): an array for image
    kernels, a dict ``{"labels": ..., "measures": ...}`` for measure kernels.

    Image kernels also take ``out=``: an array of the output's exact shape to write into
    instead of a new one (the step server passes the pixel area of its outgoing message)."""
    e = entry(name)
    if e.builtin:
        return FUNCTIONS[e.spec.name](img, **params)
    return run_plugin(e, img, params)


def output_kind(name: str) -> str:
    """'image' or 'measure' for kernel `name`."""
    return entry(name).spec.output


def output_shape(name: str, shape: Shape, params: Mapping[str, Any] | None = None) -> Shape:
    """The output shape of kernel `name` on an input of `shape` (H, W, C), for its params
    (validated here): exact, or an upper bound when the kernel declares ``output_bound``.
    ValueError when the output would exceed the size limits."""
    e = entry(name)
    p = e.spec.validate(params or {})
    out = e.spec.shape_for(shape, p)
    check_size(out[0], out[1], name=f"{e.spec.name} output")
    return out


def who(e: Entry) -> str:
    """How errors name a plugin kernel: ``plugin acme.denoise (acme-denoise 0.1.0)``."""
    return f"plugin {e.spec.name} ({e.package} {e.version})"


def run_plugin(e: Entry, img: Any, params: Mapping[str, Any]) -> Any:
    """Calls a plugin's function with validated params and checks its result."""
    spec = e.spec
    src = as_image(img)
    given = dict(params)
    out = given.pop("out", None)
    p = spec.validate(given)
    own = {k: v for k, v in p.items() if k in spec.param_names}
    exec_kw = {"threads": p.get("threads") or default_threads(), "schedule": p["schedule"],
               "chunk": p.get("chunk"), "passes": p["passes"]}
    view = src.view()
    view.flags.writeable = False  # the input may be a shared-memory frame or a message buffer
    if spec.output == "measure":
        return _check_measures(e, _call(e, view, exec_kw, own))
    shape = spec.shape_for(src.shape, p)
    check_size(shape[0], shape[1], name=f"{spec.name} output")
    if out is not None:
        if spec.output_bound:
            raise ValueError(f"{spec.name} declares only a bound on its output size, so it "
                             "cannot write into out=")
        _check_out(out, shape)
    result = _call(e, view, {**exec_kw, "out": out}, own)
    result = _check_image(e, result, shape, bound=spec.output_bound)
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


def _call(e: Entry, img: np.ndarray, exec_kw: dict[str, Any], own: dict[str, Any]) -> Any:
    assert e.spec.function is not None  # vetted at registration
    try:
        return e.spec.function(img, **exec_kw, **own)
    except ValueError as exc:
        raise ValueError(f"{who(e)} refused the input: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise PluginError(f"{who(e)} raised {type(exc).__name__}: {exc}") from exc


def _check_out(out: Any, shape: Shape) -> None:
    if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != shape
            or not out.flags.c_contiguous or not out.flags.writeable):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a writable C-contiguous uint8 array of shape {shape}, "
                         f"got {got}")


def _check_image(e: Entry, result: Any, shape: Shape, *, bound: bool) -> np.ndarray:
    if not isinstance(result, np.ndarray):
        raise PluginError(f"{who(e)} returned a {type(result).__name__}; an image kernel "
                          "returns a numpy.ndarray")
    if result.dtype != np.uint8:
        raise PluginError(f"{who(e)} returned dtype {result.dtype}; kernels return uint8")
    got = tuple(result.shape)
    if bound:
        fits = (result.ndim == 3 and 1 <= got[0] <= shape[0] and 1 <= got[1] <= shape[1]
                and got[2] == shape[2])
        if not fits:
            raise PluginError(f"{who(e)} returned shape {got}, which exceeds its declared "
                              f"output bound {shape}")
    elif got != shape:
        raise PluginError(f"{who(e)} returned shape {got} but declares {shape} for this input")
    return np.ascontiguousarray(result)


def _check_measures(e: Entry, result: Any) -> dict[str, Any]:
    if not isinstance(result, Mapping) or not isinstance(result.get("labels"), Mapping):
        raise PluginError(f"{who(e)} returned {type(result).__name__}; a measure kernel returns "
                          "{'labels': {name: value}, 'measures': {name: number}}")
    labels = result["labels"]
    measures = result.get("measures") or {}
    if len(labels) > MAX_LABELS or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_LABEL_CHARS
            and len(v) <= MAX_LABEL_CHARS for k, v in labels.items()):
        raise PluginError(f"{who(e)} returned labels that are not at most {MAX_LABELS} "
                          f"non-empty string keys and string values of <= {MAX_LABEL_CHARS} "
                          "characters")
    if not isinstance(measures, Mapping) or not all(
            isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool)
            for k, v in measures.items()):
        raise PluginError(f"{who(e)} returned measures that are not names mapped to numbers")
    return {"labels": dict(labels), "measures": {k: float(v) for k, v in measures.items()}}
