"""The step's HTTP face: ``POST /process`` for clients of the Flask-era HTTP pipeline.

Same path as gRPC: a request is translated (``translate``, pure) and sent by ``face`` to the
step's own gRPC port; ``server`` is the HTTP/1.1 server (http.server) around it. Imports
``frames``, ``routing.forward`` (channel options) and the loose modules; tracing is handed in.
"""
