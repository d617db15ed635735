"""Live load of running steps: what their ``/metrics`` say and what to scale.

- :mod:`~topology.load.scrape`: one scrape of a step's ``/metrics`` -> samples;
- :mod:`~topology.load.step_load`: two samples -> rates, latencies, utilisation (pure);
- :mod:`~topology.load.advice`: scaling advice per step from its load (pure);
- :mod:`~topology.load.amdahl`: Amdahl's law fitted to speed-ups per thread count (pure);
- :mod:`~topology.load.live`: recent samples per endpoint, for callers that poll;
- :mod:`~topology.load.top`: ``stepchain top``, the terminal dashboard.

May import :mod:`topology.pipeline`, ``stepsvc`` and ``native``; never the service or a backend.
"""
