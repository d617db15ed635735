"""Finding plugin kernels: the ``stepchain.kernels`` entry-point group, vetted one by one.

An installed distribution declares its kernels in its metadata::

    [project.entry-points."stepchain.kernels"]
    "acme.denoise" = "acme_denoise:DENOISE"

Each entry point must load to a :class:`native.spec.KernelSpec` whose `name` is the entry
point's name. A plugin that cannot be imported, whose specification is not valid, or whose name
or alias is taken (by a built-in or by a plugin loaded before it, in package order) is *failed*:
:func:`scan` returns it with the reason and logs one line naming the package; it never raises,
so one broken package cannot stop a step server from serving the other kernels.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from native.spec import (
    OUTPUT_KINDS,
    PARAM_NAME_RE,
    PLUGIN_NAME_RE,
    RESERVED_PARAM_NAMES,
    KernelSpec,
    Param,
)

GROUP = "stepchain.kernels"
log = logging.getLogger("stepchain.plugins")


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin kernel and where it came from."""

    spec: KernelSpec
    package: str
    version: str
    entry_point: str  # "acme.denoise = acme_denoise:DENOISE"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin entry point that was not loaded, and why (one line)."""

    name: str
    package: str
    version: str
    entry_point: str
    reason: str

    def message(self) -> str:
        """The one log line: package, entry point, reason, consequence."""
        return (f"plugin package {self.package} {self.version}: kernel {self.name!r} "
                f"({self.entry_point}) not loaded: {self.reason}")


@dataclass
class Scan:
    """What :func:`scan` found: the plugins in load order and the failures."""

    plugins: list[Plugin] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)


def installed_entry_points(path: list[str] | None = None) -> list[tuple[md.EntryPoint, str, str]]:
    """(entry point, package, version) of the ``stepchain.kernels`` group in the installed
    distributions (or those on `path`), sorted by package then name, each package once."""
    found: dict[tuple[str, str], tuple[md.EntryPoint, str, str]] = {}
    dists = md.distributions() if path is None else md.distributions(path=path)
    for dist in dists:
        package = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group == GROUP:
                # the first distribution on the path wins, as it does for imports
                found.setdefault((package.lower(), ep.name), (ep, package, dist.version))
    return [found[key] for key in sorted(found)]


def scan(entry_points: Iterable[tuple[Any, str, str]], taken: Mapping[str, str]) -> Scan:
    """Loads and vets each entry point. `taken` maps names (and aliases) already registered to
    who holds them ("built-in kernel gaussian_blur"); a plugin's names are added as it loads.
    `entry_points` yields (object with ``name``, ``value`` and ``load()``, package, version)."""
    result = Scan()
    owners = dict(taken)
    for ep, package, version in entry_points:
        where = f"{ep.name} = {ep.value}"
        try:
            spec = _load(ep)
            names = (spec.name, *spec.aliases) if isinstance(spec.aliases, tuple) else (spec.name,)
            clashes = [f"{n!r} is already the {owners[n]}" for n in names
                       if isinstance(n, str) and n in owners]
            problems = clashes + spec_problems(spec, expected_name=ep.name)
            if problems:
                raise _Refused("; ".join(problems))
        except Exception as exc:  # a plugin's import may raise anything; never fatal
            reason = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}"
            failure = PluginFailure(ep.name, package, version, where, _one_line(reason))
            log.warning("%s", failure.message())
            result.failures.append(failure)
            continue
        for n in (spec.name, *spec.aliases):
            owners[n] = f"kernel {spec.name} of package {package}"
        result.plugins.append(Plugin(spec, package, version, where))
    return result


class _Refused(Exception):
    """A plugin that loaded but may not be registered (bad specification, name clash)."""


def _load(ep: Any) -> KernelSpec:
    try:
        obj = ep.load()
    except SystemExit as exc:  # a plugin calling sys.exit() at import must not end the server
        raise RuntimeError(f"import called sys.exit({exc.code!r})") from None
    if not isinstance(obj, KernelSpec):
        raise _Refused(f"entry point loads a {type(obj).__name__}, not a native.KernelSpec")
    return obj


def spec_problems(spec: KernelSpec, *, expected_name: str | None = None) -> list[str]:
    """What is wrong with a plugin's specification, one message per problem (empty: valid)."""
    problems: list[str] = []
    if not isinstance(spec.name, str) or not PLUGIN_NAME_RE.match(spec.name):
        problems.append(f"name {spec.name!r} is not namespaced: plugin kernels are named "
                        "'namespace.kernel' (lower case, e.g. 'acme.denoise')")
    elif expected_name is not None and spec.name != expected_name:
        problems.append(f"the entry point is named {expected_name!r} but the specification "
                        f"{spec.name!r}; they must match")
    if not isinstance(spec.aliases, tuple):
        problems.append("aliases must be a tuple of names")
    else:
        problems += [f"alias {a!r} is not namespaced ('namespace.name')"
                     for a in spec.aliases if not isinstance(a, str) or not PLUGIN_NAME_RE.match(a)]
    if not isinstance(spec.doc, str) or not spec.doc.strip():
        problems.append("doc must say in a line what the kernel does")
    if spec.output not in OUTPUT_KINDS:
        problems.append(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {spec.output!r}")
    if not callable(spec.function):
        problems.append("function is missing (the callable that computes the kernel)")
    if spec.halo is not None and not callable(spec.halo) and (
            not isinstance(spec.halo, int) or isinstance(spec.halo, bool) or spec.halo < 0):
        problems.append(f"halo must be pixels (an int >= 0), a function of the params or None; "
                        f"got {spec.halo!r}")
    if spec.halo is None and not spec.not_tileable:
        problems.append("halo is None (not tileable) but not_tileable does not say why")
    for name in ("output_shape", "check"):
        value = getattr(spec, name)
        if value is not None and not callable(value):
            problems.append(f"{name} must be a function or None")
    if spec.resizes and spec.output_shape is None:
        problems.append("resizes is set but output_shape is missing: the step server must know "
                        "the output size before it runs the kernel")
    if not isinstance(spec.params, tuple):
        problems.append("params must be a tuple of native.Param")
    else:
        problems += _param_problems(spec.params)
    if not problems:
        try:  # the defaults must pass the kernel's own validation
            spec.validate({})
        except Exception as exc:
            problems.append(f"its defaults do not validate: {type(exc).__name__}: {exc}")
    return problems


def _param_problems(params: tuple[Any, ...]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for p in params:
        if not isinstance(p, Param):
            problems.append(f"params holds a {type(p).__name__}, not a native.Param")
            continue
        if not isinstance(p.name, str) or not PARAM_NAME_RE.match(p.name):
            problems.append(f"parameter name {p.name!r} must be lower case letters, digits "
                            "and '_' (at most 40)")
        elif p.name in RESERVED_PARAM_NAMES:
            problems.append(f"parameter {p.name!r} is reserved (every kernel takes "
                            "threads, schedule, chunk, passes and out)")
        elif p.name in seen:
            problems.append(f"parameter {p.name!r} is declared twice")
        seen.add(str(p.name))
        if p.kind not in (int, float, str):
            problems.append(f"parameter {p.name!r}: kind must be int, float or str")
        elif p.kind is not str and p.minimum is not None and p.maximum is not None \
                and p.minimum > p.maximum:
            problems.append(f"parameter {p.name!r}: minimum {p.minimum} > maximum {p.maximum}")
        if p.default is not None and p.kind in (int, float, str):
            try:
                p.check("default", p.default)
            except ValueError as exc:
                problems.append(f"parameter {p.name!r}: its default is not valid ({exc})")
    return problems


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def builtin_owners(names: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """`taken` for :func:`scan` from {canonical name: aliases} of the built-ins."""
    owners: dict[str, str] = {}
    for name, aliases in names.items():
        owners[name] = f"built-in kernel {name}"
        for alias in aliases:
            owners[alias] = f"alias of built-in kernel {name}"
    return owners

