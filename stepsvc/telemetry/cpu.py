"""The CPU one step replica has, and how busy its host is: what scaling advice divides by.

A step's wall time per request includes waiting for a core, so arrival x wall time says little
on a busy host; the CPU seconds a request costs against the cores a replica has says what a
replica consumes (:mod:`topology.load.advice`). Exposed with the step's metrics:

- ``stepchain_step_cpu_cores{source}`` — cores one replica may use: its cgroup's CPU limit
  (``source="limit"``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
  the tightest along its cgroup path), else its pod's CPU request
  (``source="request"``, from ``STEPCHAIN_CPU_REQUEST_MILLICORES``, which a Deployment fills
  from the downward API), else the cores it may be scheduled on (``source="host"``);
- ``stepchain_step_host_cpu_cores`` — the host's online cores;
- ``stepchain_step_host_cpu_busy_seconds_total`` — CPU seconds the whole host spent busy
  (``/proc/stat``: user, nice, system, irq, softirq, steal), read at scrape time: with two
  scrapes, how saturated the host is, whoever uses it.

The parsers are pure; :func:`register_cpu_metrics` reads the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

#: Millicores of the pod's CPU request, set by a Deployment from the downward API.
CPU_REQUEST_ENV = "STEPCHAIN_CPU_REQUEST_MILLICORES"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: /proc/stat columns counted as busy (iowait and idle are not; guest is inside user).
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal


@dataclass(frozen=True)
class ReplicaCpu:
    """Cores one replica may use and where that figure comes from."""

    cores: float
    source: str  # "limit" | "request" | "host"


def cgroup_v2_limit(cpu_max: str) -> float | None:
    """Cores from a cgroup v2 ``cpu.max`` (``"150000 100000"`` -> 1.5; ``"max ..."`` -> None)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_v1_limit(quota_us: str, period_us: str) -> float | None:
    """Cores from cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none)."""
    try:
        quota, period = int(quota_us.strip()), int(period_us.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def request_cores(environ: Mapping[str, str]) -> float | None:
    """Cores of the pod's CPU request from ``STEPCHAIN_CPU_REQUEST_MILLICORES`` (None: unset)."""
    text = environ.get(CPU_REQUEST_ENV, "").strip()
    try:
        millicores = float(text)
    except ValueError:
        return None
    return millicores / 1000.0 if millicores > 0 else None


def replica_cpu(limit: float | None, request: float | None, schedulable: int) -> ReplicaCpu:
    """The limit if any, else the request, else the cores the process may run on."""
    if limit is not None:
        return ReplicaCpu(min(limit, float(schedulable)), "limit")
    if request is not None:
        return ReplicaCpu(request, "request")
    return ReplicaCpu(float(schedulable), "host")


def busy_seconds(proc_stat: str, ticks_per_second: float) -> float | None:
    """CPU seconds the host spent busy, from ``/proc/stat``'s aggregate ``cpu`` line."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:]]
            except ValueError:
                return None
            return sum(values[i] for i in _BUSY_COLUMNS if i < len(values)) / ticks_per_second
    return None


def cgroup_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU limit along this process's cgroup path (v2 or v1), None without one."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text(encoding="utf-8")
        except OSError:
            return None
    limits = [limit for limit in _cgroup_limits(root, proc_cgroup) if limit is not None]
    return min(limits) if limits else None


def _cgroup_limits(root: Path, proc_cgroup: str) -> Iterator[float | None]:
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # v2: one tree, cpu.max per directory
            yield from map(_v2_limit_at, _ancestors(root, path))
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's tree
            base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
            yield from map(_v1_limit_at, _ancestors(base, path))


def _ancestors(root: Path, path: str) -> list[Path]:
    parts = [p for p in path.strip("/").split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit_at(directory: Path) -> float | None:
    try:
        return cgroup_v2_limit((directory / "cpu.max").read_text(encoding="utf-8"))
    except OSError:
        return None


def _v1_limit_at(directory: Path) -> float | None:
    try:
        return cgroup_v1_limit((directory / "cpu.cfs_quota_us").read_text(encoding="utf-8"),
                               (directory / "cpu.cfs_period_us").read_text(encoding="utf-8"))
    except OSError:
        return None


def schedulable_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _HostCpuCollector(Collector):
    """Reads ``/proc/stat`` at each scrape."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._labels = dict(labels)
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            text = Path("/proc/stat").read_text(encoding="utf-8")
        except OSError:
            return
        seconds = busy_seconds(text, self._ticks)
        if seconds is None:
            return
        family = CounterMetricFamily(
            "stepchain_step_host_cpu_busy_seconds",
            "CPU seconds the whole host spent busy (all processes, /proc/stat).",
            labels=list(self._labels))
        family.add_metric(list(self._labels.values()), seconds)
        yield family


def register_cpu_metrics(registry: CollectorRegistry, labels: Mapping[str, str],
                         environ: Mapping[str, str] | None = None) -> ReplicaCpu:
    """Adds the three CPU series (module docstring) to `registry`; returns the replica's CPU."""
    environ = os.environ if environ is None else environ
    cpu = replica_cpu(cgroup_limit(), request_cores(environ), schedulable_cores())
    names = list(labels)
    Gauge("stepchain_step_cpu_cores", "Cores one replica may use (its CPU limit, else its "
          "pod's CPU request, else the cores it may run on).", [*names, "source"],
          registry=registry).labels(**labels, source=cpu.source).set(cpu.cores)
    Gauge("stepchain_step_host_cpu_cores", "Online cores of the host the step runs on.",
          names, registry=registry).labels(**labels).set(os.cpu_count() or 1)
    registry.register(_HostCpuCollector(labels))
    return cpu
