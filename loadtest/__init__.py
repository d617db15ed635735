"""Load testing stepchain pipelines with Locust over gRPC.

``curves`` (pure load curves), ``targets`` (where the pipelines are), ``plot`` (PNG from Locust's
CSV) and ``cli`` (``stepchain loadtest``) never import Locust: importing Locust monkey-patches the
whole process with gevent. Only ``shapes``, ``grpc_user`` and ``locustfile`` — which run inside
Locust — do.
"""
