"""The topology HTTP service (FastAPI): the API, its policy and the web console.

- :mod:`~topology.service.app`: the app, the pipeline routes and their answers;
- :mod:`~topology.service.advice_routes`: ``GET /pipeline/{id}/advice``;
- :mod:`~topology.service.settings`, :mod:`~topology.service.auth`: flags/env and the token;
- :mod:`~topology.service.security`, :mod:`~topology.service.allowlist`: what may be deployed;
- :mod:`~topology.service.metrics`: the service's own Prometheus metrics;
- :mod:`~topology.service.console`: the web console's pages.

The top floor of ``topology``: may import every other room; nothing below imports it.
"""
