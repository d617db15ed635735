"""The step's HTTP face: ``POST /process`` for clients of the Flask-era HTTP pipeline.

Same path as gRPC: a request is translated and sent to the step's own gRPC port. Imports
``frames``, ``routing.forward`` (channel options), ``telemetry`` and the loose modules.
"""
