"""The web console: server-rendered pages of the topology service (Jinja2, inline SVG).

- :mod:`~.routes`: the pages and fragments; :mod:`~.run`: a photo through the pipeline;
- :mod:`~.svg`: the pictures; :mod:`~.jsonview`: a JSON with its errors beside the fields;
- the fit of measured speed-ups is :mod:`topology.load.amdahl` (bench kernels uses it too).

Part of :mod:`topology.service`: may import every room below it.
"""
