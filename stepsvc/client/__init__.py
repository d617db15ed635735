"""Client side of a pipeline: what ``stepchain submit``, ``request`` and ``trace`` do.

``call`` (one request and its timing table), ``tiles`` (pure tiling), ``tile_submit`` (an
image as tiles), ``batch`` (tiles and directories, every request accounted for),
``commands`` (the CLI), ``trace/`` (a request's waterfall from Jaeger or a file). Imports
``frames``, ``routing.forward``, ``step.config`` (the pipeline a step describes),
``telemetry`` and the loose modules; never the server.
"""
