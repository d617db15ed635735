"""The topology service: turns a pipeline JSON into running steps and watches them run.

Rooms, bottom first; each imports only rooms above it in this list (plus ``stepsvc`` and
``native``), never one beside it (tests/test_floor_plan.py checks):

- :mod:`topology.pipeline`: the one pipeline model: the JSON as written, the checked graph,
  the serializers, the order requests flow in (pure);
- :mod:`topology.backend`: the interface both backends implement and what they return;
- side by side: :mod:`topology.kube` (Kubernetes: object names, manifests, the backend that
  applies them), :mod:`topology.local` (local step processes: the backend, supervision) and
  :mod:`topology.load` (live load of running steps: scraping, rates, scaling advice,
  ``stepchain top``);
- side by side: :mod:`topology.jobs` (batch jobs over a pipeline) and :mod:`topology.netns`
  (steps on hosts of their own with link faults, for the network-fault tests and examples);
- :mod:`topology.service`: the HTTP service (FastAPI): routes, auth, settings, policy,
  metrics, the web console;
- the commands: :mod:`topology.cli` (``stepchain topology serve|render``) and
  :mod:`topology.jobs_cli` (``stepchain jobs ...``).
"""
