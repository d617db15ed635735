"""CPU seconds and resident memory of a system's whole process tree, sampled with psutil.

A system is a few root processes (a service and the processes it starts: Ray's GCS, raylet and
workers; BentoML's arbiter and service workers; stepchain's topology service and its steps).
:class:`TreeMeter` samples the roots and all their descendants every `interval_s`, remembering
each process's CPU time (user + system) by (pid, start time), so a window's CPU is the sum of
what every process used in it, including processes born or gone during it (a process that
exits loses at most one interval). RSS is summed over the tree at each sample; pages shared
between processes (the object store's or frames' shared memory, the interpreter's text) count
once per process that maps them, as ``ps`` shows them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

Key = tuple[int, float]  # (pid, create_time): pids are reused


def tree(roots: Iterable[int]) -> list[psutil.Process]:
    """The root processes that still run and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found[pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


@dataclass
class Window:
    """What the tree used between :meth:`TreeMeter.start_window` and :meth:`TreeMeter.end_window`."""

    cpu_s: float
    peak_rss_bytes: int
    #: CPU seconds per process name (``raylet``, ``ray::ServeReplica:peers:step1``, ...)
    cpu_by_name: dict[str, float] = field(default_factory=dict)


class TreeMeter:
    """Samples the process tree under `roots` in a thread of its own until :meth:`close`."""

    def __init__(self, roots: Iterable[int], interval_s: float = 0.25) -> None:
        self.roots = list(roots)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._cpu: dict[Key, float] = {}
        self._names: dict[Key, str] = {}
        self._window_start: dict[Key, float] | None = None
        self._window_peak = 0
        self.peak_rss_bytes = 0
        self.pids_seen: set[int] = set()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peers-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Reads every process of the tree once (also called at window edges)."""
        rss_total = 0
        readings: list[tuple[Key, str, float]] = []
        for proc in tree(self.roots):
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    rss_total += proc.memory_info().rss
                    name = _name(proc)
            except psutil.Error:
                continue
            readings.append((key, name, times.user + times.system))
        with self._lock:
            for key, name, cpu in readings:
                self._cpu[key] = cpu
                self._names[key] = name
                self.pids_seen.add(key[0])
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss_total)
            self._window_peak = max(self._window_peak, rss_total)

    def pids(self) -> list[int]:
        """Every process of the tree now (for stopping and checking what is left)."""
        return [p.pid for p in tree(self.roots)]

    def start_window(self) -> None:
        self.sample()
        with self._lock:
            self._window_start = dict(self._cpu)
            self._window_peak = 0
        self.sample()

    def end_window(self) -> Window:
        self.sample()
        with self._lock:
            start = self._window_start or {}
            by_name: dict[str, float] = {}
            for key, cpu in self._cpu.items():
                used = cpu - start.get(key, 0.0)
                if used > 0:
                    name = self._names.get(key, "?")
                    by_name[name] = by_name.get(name, 0.0) + used
            return Window(cpu_s=sum(by_name.values()), peak_rss_bytes=self._window_peak,
                          cpu_by_name=by_name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _name(proc: psutil.Process) -> str:
    """A readable process name: Ray's workers name themselves ``ray::...`` in their command
    line; stepchain's processes by their command (``stepchain step serve step-2.json``);
    other Python processes by the module or script they run."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        cmd = []
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    for command in (["step", "serve"], ["topology", "serve"]):
        at = next((i for i in range(len(cmd) - 1) if cmd[i:i + 2] == command), None)
        if at is not None:
            config = next((cmd[i + 1].rsplit("/", 1)[-1] for i, a in enumerate(cmd[:-1])
                           if a == "--config"), "")
            return " ".join(["stepchain", *command, config]).strip()
    if "-m" in cmd[:-1]:
        module = cmd[cmd.index("-m") + 1]
        extra = next((cmd[i + 1] for i, a in enumerate(cmd[:-1])
                      if a in ("--service-name", "--http-step")), "")
        return f"{module} {extra}".strip()
    if len(cmd) > 1 and cmd[1].endswith(".py"):
        return cmd[1].rsplit("/", 1)[-1]
    return proc.name()


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Waits up to `timeout_s` for `pids` to exit; SIGKILLs (by pid) those still running and
    returns them: processes a system left behind."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    left = []
    for proc in alive:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # exited; its parent (not us) reaps it
            proc.kill()
            left.append(proc.pid)
        except psutil.Error:
            continue
    if left:
        psutil.wait_procs([p for p in alive if p.pid in left], timeout=5)
    return left
