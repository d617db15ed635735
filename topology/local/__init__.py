"""Local step processes: a pipeline as ``stepchain step serve`` processes on loopback ports.

- :mod:`~topology.local.backend`: the local backend (which steps to start, ports, status);
- :mod:`~topology.local.launch`: one step replica's command line, environment and readiness;
- :mod:`~topology.local.state`: the state dir a later service picks the pipelines up from;
- :mod:`~topology.local.supervisor`: spawn, restart with backoff, stop, reap (knows processes,
  nothing of pipelines).

May import :mod:`topology.pipeline`, :mod:`topology.backend`, ``stepsvc`` and ``native``.
"""
