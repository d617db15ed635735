"""Local step processes: a pipeline as ``stepchain step serve`` processes on loopback ports.

- :mod:`~topology.local.backend`: the local backend (state dir, ports, readiness);
- :mod:`~topology.local.supervisor`: spawn, restart with backoff, stop, reap (knows processes,
  nothing of pipelines).

May import :mod:`topology.pipeline`, :mod:`topology.backend`, ``stepsvc`` and ``native``.
"""
