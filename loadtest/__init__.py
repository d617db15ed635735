"""Load testing stepchain pipelines with Locust over gRPC.

``curves`` (pure load curves), ``latency``, ``interval_stats`` and ``step_format`` (per-second
and per-step statistics and how they are written), ``targets`` (where the pipelines are),
``results`` and ``plot`` (reading the CSV, drawing the PNG) and ``cli`` (``stepchain loadtest``)
never import Locust: importing Locust monkey-patches the whole process with gevent. Only
``shapes``, ``grpc_user``, ``step_report``, ``steps_tab`` and ``locustfile`` — which run inside
Locust — do.
"""
