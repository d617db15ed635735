"""The topology service: turns a pipeline JSON into running steps and watches them run.

Rooms, each importing only the ones listed before it (plus ``stepsvc`` and ``native``):

- :mod:`topology.pipeline.graph`: the one pipeline model: the JSON as written, the checked graph,
  the serializers, the order requests flow in (pure);
- :mod:`topology.backend`: the interface both backends implement and what they return;
- :mod:`topology.kube`: Kubernetes: object names, manifests (one Deployment per step or one
  colocated pod), the backend that applies them;
- :mod:`topology.local`: local step processes: the backend, supervision;
- :mod:`topology.load`: live load of running steps: scraping, rates, scaling advice,
  ``stepchain top``;
- :mod:`topology.service`: the HTTP service (FastAPI): routes, auth, settings, policy,
  metrics, the web console;
- :mod:`topology.netns`: steps on hosts of their own (network namespaces) with link faults, for
  the network-fault tests and examples; nothing imports it;
- :mod:`topology.cli`: ``stepchain topology serve|render``.
"""
