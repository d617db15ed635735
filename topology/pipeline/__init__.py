"""The one pipeline model: what a pipeline JSON may say and what it means (pure).

- :mod:`~topology.pipeline.model`: the pydantic schema of the JSON as written (Flask-era
  format, nested lists, alternatives, aliases), every problem with its field path;
- :mod:`~topology.pipeline.graph`: that JSON flattened into a checked :class:`Pipeline`;
- :mod:`~topology.pipeline.dump`: a checked pipeline written back out: each step's
  PIPELINE_CONFIG, and pipeline JSON that parses back to it;
- :mod:`~topology.pipeline.flow`: the order requests flow through the graph.

Imports ``stepsvc`` (the step config a step reads) and ``native`` (kernel names), nothing
else of ``topology``.
"""
