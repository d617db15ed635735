"""Kubernetes: a pipeline as Kubernetes objects, and the backend that applies them.

- :mod:`~topology.kube.names`: object names, labels, annotations, the step's ports;
- :mod:`~topology.kube.objects`: one step's pieces (ConfigMap, Service, container, Deployment,
  HPA, NetworkPolicy), built from values;
- :mod:`~topology.kube.per_step` (one Deployment per step) and :mod:`~topology.kube.colocated`
  (one pod running every step): the two layouts; :mod:`~topology.kube.manifests` picks one;
- :mod:`~topology.kube.backend`: server-side apply, status and delete with the official client.

All but the backend are pure. May import :mod:`topology.pipeline`, :mod:`topology.backend`,
``stepsvc`` and ``native``.
"""
