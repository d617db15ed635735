"""Kubernetes: a pipeline as Kubernetes objects, and the backend that applies them.

- :mod:`~topology.kube.manifests`: pipeline -> manifests, one Deployment per step (pure);
- :mod:`~topology.kube.colocated`: a ``colocate: true`` pipeline -> one pod of every step;
- :mod:`~topology.kube.backend`: server-side apply, status and delete with the official client.

May import :mod:`topology.pipeline`, :mod:`topology.backend`, ``stepsvc`` and ``native``.
"""
