"""``stepchain trace show|list``: a request's per-step waterfall in the terminal.

``show`` (spans from an OTLP JSON file or Jaeger, drawn), ``completeness`` (pure: what a
trace still lacks), ``cli`` (the commands). Imports nothing else of stepsvc.
"""
