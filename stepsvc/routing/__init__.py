"""Which step comes next and how a request reaches it.

``router`` (pure: the order of candidates from the config, discovery and labels),
``discovery`` (which steps are active: static file), ``kubernetes`` (the same from a
ConfigMap watch), ``channels`` (channel options, keepalive, each channel's state),
``forward`` (failover in order, waiting for a step coming back), ``throttle`` (client-side adaptive throttling, shared by every client
stepchain ships). Imports ``step.config``
for the step model, ``frames`` and the loose stepsvc modules; never the server.
"""
