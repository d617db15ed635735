"""The one place that names kernels: built-ins and plugins, their aliases and parameters.

Everything that accepts a kernel name or parameters (the Python API, the step server, the
pipeline JSON model, ``stepchain kernels``, the console and the OpenAPI schema) looks it up
here and validates through :func:`validate_params`, so a bad value is rejected with the same
message wherever it enters, for a built-in and a plugin alike.

Plugins (:mod:`native.plugins`) are loaded once, on the first lookup that needs them: a name
with a dot, a listing of every kernel, or :func:`load_plugins` (the step server and the
topology service call it at start so a broken plugin is logged then). Built-in names never
contain a dot, so looking up a built-in never imports a plugin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from native import plugins
from native.builtins import BUILTINS
from native.spec import (  # re-exported: the limits and exec params used to live here
    EXEC_PARAM_NAMES,
    EXEC_PARAMS,
    MAX_CHUNK,
    MAX_PASSES,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_THREADS,
    SCHEDULES,
    KernelSpec,
    NotTileable,
    default_threads,
    parse_schedule,
)

__all__ = [
    "BUILTINS", "EXEC_PARAMS", "EXEC_PARAM_NAMES", "MAX_CHUNK", "MAX_PASSES", "MAX_PIXELS",
    "MAX_SIDE", "MAX_THREADS", "SCHEDULES", "Entry", "Registry", "canonical_name", "catalog",
    "default_threads", "entries", "entry", "failures", "kernel_types", "load_plugins",
    "params_json_schema", "parse_schedule", "registry", "spec_of", "validate_params",
]

BUILTIN_PACKAGE = "stepchain"


@dataclass(frozen=True)
class Entry:
    """A registered kernel: its specification (with its function) and where it came from."""

    spec: KernelSpec
    package: str
    version: str
    builtin: bool
    entry_point: str = ""

    @property
    def source(self) -> str:
        """``built-in`` or ``acme-denoise 0.1.0``: what `stepchain kernels` prints."""
        return "built-in" if self.builtin else f"{self.package} {self.version}"

    def describe(self) -> dict[str, Any]:
        """This kernel as JSON: `stepchain kernels --json`, ``GET /kernels``, the console."""
        spec = self.spec
        try:
            tiling: dict[str, Any] = {"tileable": True,
                                      "halo_default": spec.reach(spec.validate({})).halo}
        except NotTileable as exc:
            tiling = {"tileable": False, "reason": str(exc)}
        return {"name": spec.name, "aliases": list(spec.aliases), "doc": spec.doc,
                "package": self.package, "version": self.version, "builtin": self.builtin,
                "entry_point": self.entry_point, "output": spec.output,
                "resizes": spec.resizes, "output_bound": spec.output_bound,
                "releases_gil": spec.releases_gil, "tiling": tiling,
                "params": spec.params_json_schema()}


class Registry:
    """Kernels by canonical name and alias: the built-ins, then the plugins `discover` yields.

    `discover` returns (entry point, package, version) triples (by default the installed
    distributions' ``stepchain.kernels`` group); it runs once, on first need.
    """

    def __init__(self, builtins: Iterable[Entry],
                 discover: Callable[[], Iterable[tuple[Any, str, str]]] | None = None) -> None:
        self._entries: dict[str, Entry] = {e.spec.name: e for e in builtins}
        self._aliases: dict[str, str] = {a: e.spec.name for e in self._entries.values()
                                         for a in e.spec.aliases}
        self._discover = discover
        self._failures: list[plugins.PluginFailure] = []
        self._loaded = discover is None
        self._lock = threading.Lock()

    def load_plugins(self) -> None:
        """Discovers and vets the plugins (once; later calls return at once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._discover is None:
                return
            taken = plugins.builtin_owners({n: e.spec.aliases for n, e in self._entries.items()})
            found = plugins.scan(self._discover(), taken)
            for p in found.plugins:
                self._entries[p.spec.name] = Entry(p.spec, p.package, p.version, False,
                                                   p.entry_point)
                self._aliases.update({a: p.spec.name for a in p.spec.aliases})
            self._failures = found.failures
            self._loaded = True

    def entries(self) -> list[Entry]:
        """Every kernel: built-ins in their order, then plugins by package."""
        self.load_plugins()
        return list(self._entries.values())

    def failures(self) -> list[plugins.PluginFailure]:
        """Plugins that were not loaded, with the reason."""
        self.load_plugins()
        return list(self._failures)

    def canonical_name(self, name: str) -> str:
        """Maps a kernel name or alias (case-insensitive) to its canonical name."""
        if not isinstance(name, str):
            raise ValueError(f"kernel type must be a string, got {type(name).__name__}")
        key = name.strip().lower()
        if "." in key:
            self.load_plugins()
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        self.load_plugins()
        failed = [f for f in self._failures if f.name == key]
        if failed:
            raise ValueError(f"kernel type {name!r} is from plugin package {failed[0].package}, "
                             f"which failed to load: {failed[0].reason}")
        types = self.kernel_types()
        near = [t for t in types if "." in t and t.rsplit(".", 1)[1] == key]
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise ValueError(f"unknown kernel type {name!r}{hint}; installed types: "
                         f"{', '.join(types)}")

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical_name(name)]

    def kernel_types(self) -> list[str]:
        """Every accepted type name (canonical names and aliases), sorted."""
        self.load_plugins()
        return sorted([*self._entries, *self._aliases])


def _builtin_entries() -> list[Entry]:
    from importlib.metadata import PackageNotFoundError, version

    from native.kernels import FUNCTIONS

    try:
        own = version(BUILTIN_PACKAGE)
    except PackageNotFoundError:  # a checkout on sys.path without an install
        own = "0+unknown"
    return [Entry(replace(spec, function=FUNCTIONS[name]), BUILTIN_PACKAGE, own, True)
            for name, spec in BUILTINS.items()]


#: The process's registry: built-ins and the installed plugins.
registry = Registry(_builtin_entries(), plugins.installed_entry_points)


def load_plugins() -> None:
    """Loads the installed plugins now (a server calls it at start so failures log then)."""
    registry.load_plugins()


def canonical_name(name: str) -> str:
    """Maps a kernel name or alias (case-insensitive) to its canonical name; ValueError lists
    the installed types (or says which plugin package failed to provide it)."""
    return registry.canonical_name(name)


def entry(name: str) -> Entry:
    """The registered kernel `name` (canonical or alias)."""
    return registry.entry(name)


def entries() -> list[Entry]:
    """Every registered kernel, built-ins first."""
    return registry.entries()


def failures() -> list[plugins.PluginFailure]:
    """Installed plugins that failed to load, with the reason."""
    return registry.failures()


def catalog() -> dict[str, Any]:
    """Every kernel described (:meth:`Entry.describe`) and every failed plugin with its reason:
    what `stepchain kernels --json` prints and the topology service's ``GET /kernels`` serves."""
    return {"kernels": [e.describe() for e in entries()],
            "failed": [{"name": f.name, "package": f.package, "version": f.version,
                        "entry_point": f.entry_point, "reason": f.reason} for f in failures()]}


def kernel_types() -> list[str]:
    """Every accepted `type` (canonical names and aliases), sorted: what the OpenAPI lists."""
    return registry.kernel_types()


def spec_of(name: str) -> KernelSpec:
    return registry.entry(name).spec


def validate_params(name: str, params: Mapping[str, Any] | None, *,
                    allow_exec: bool = True) -> dict[str, Any]:
    """Checks `params` for kernel `name` and returns them with defaults filled in.

    Unknown names, wrong types, NaN and out-of-range values raise ValueError naming the
    parameter and what is allowed. With `allow_exec`, threads/schedule/passes are accepted too.
    """
    return spec_of(name).validate(params, allow_exec=allow_exec)


def params_json_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a kernel's `params` object (used in the topology API's OpenAPI)."""
    return spec_of(name).params_json_schema()
