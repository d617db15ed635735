"""The gRPC step service: one pipeline step per process, chained through discovery.

Rooms, each importing only the ones listed before it (and ``native``, ``stepchain.v1``):
``limits``, ``ports``, ``cli_args``, ``protocol`` (loose: defaults, free ports, argparse types,
the method names and metadata keys) ·
``frames/`` (images on the wire) · ``routing/`` (the next step: router, forwarding, discovery) ·
``step/`` (the step server) · ``telemetry/`` (tracing, metrics, the step's observer) ·
``http/`` (the HTTP face) · ``client/`` (submit, tiles, batches, traces) · ``serve`` (the
``step serve`` command wiring a step together) · ``cli`` (the ``stepchain`` command, which
loads every package's commands by name). (``step.config`` and ``step.graph`` are the
model every room reads.) Nothing here imports ``topology``, ``loadtest`` or ``bench``;
``tests/test_floor_plan.py`` checks all of it.
"""
