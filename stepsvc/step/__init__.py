"""The step server: one pipeline step answering StepService calls.

``config`` and ``graph`` (the step's pipeline config, checked), ``admission`` and
``memory_budget`` (who may run now), ``servicer`` (one request: admit, decode, kernel,
forward), ``server`` (gRPC server, health, reflection, drain), ``lifeline`` (stop when the
parent dies). Imports ``frames``, ``routing`` and the loose stepsvc modules; never telemetry
(an observer is handed in), the HTTP face or the client.
"""
