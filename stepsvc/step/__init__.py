"""The step server: one pipeline step answering StepService calls.

``config`` and ``graph`` (the step's pipeline config, checked), ``admission`` and
``memory_budget`` (who may run now), ``plan`` (what a request's header decides, once),
``checks`` and ``refusals`` (what is refused, with which gRPC code), ``kernel`` (the pass
loop), ``segments`` and ``answer`` (shared-memory input and output, the response bytes),
``servicer`` (one request's path, in order), ``hooks`` (what telemetry plugs into),
``server`` (gRPC server, health, reflection, drain), ``lifeline`` (stop when the parent
dies). Imports ``frames``, ``routing`` and the loose stepsvc modules; never telemetry (an
observer is handed in), the HTTP face or the client.
"""
