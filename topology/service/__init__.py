"""The topology HTTP service (FastAPI): the API, its policy and the web console.

- :mod:`~topology.service.app`: the app over a backend: auth on writes, errors, health;
- :mod:`~topology.service.pipeline_routes`, :mod:`~topology.service.schemas`: the pipeline
  routes and what the API answers;
- :mod:`~topology.service.advice_routes`, :mod:`~topology.service.kernel_routes`,
  :mod:`~topology.service.job_routes`: advice, the kernels a step may name, batch jobs;
- :mod:`~topology.service.settings`, :mod:`~topology.service.auth`: flags/env and the token;
- :mod:`~topology.service.security`, :mod:`~topology.service.allowlist`: what may be deployed;
- :mod:`~topology.service.metrics`: the service's own Prometheus metrics;
- :mod:`~topology.service.console`: the web console's pages.

The top floor of ``topology``: may import every other room; nothing below imports it.
"""
