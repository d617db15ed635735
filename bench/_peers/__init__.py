"""The room behind ``stepchain bench peers``: the same 3-step chain through stepchain and the
serving stacks a user would pick instead, driven by one client.

- :mod:`.chains`: the light and heavy chains (kernel names and parameters) and the raw-pixel
  framing the HTTP peers use; imported by every system, so all call the same kernels alike;
- :mod:`.meter`: CPU seconds and RSS of a system's whole process tree (psutil);
- :mod:`.load`: the client: closed-loop callers and an open-loop (Poisson) run;
- :mod:`.systems`: how each system starts, is called and is stopped (stepchain's local
  backend, stepchain over TCP only, the Flask-era HTTP+JPEG steps, Ray Serve, BentoML);
- :mod:`.ray_app` and :mod:`.bento_app`: the Ray Serve application and the BentoML services,
  run in processes of their own (never imported by the benchmark itself, so neither stack is
  needed to run the others).

Imports point one way: ``bench.peers`` -> systems -> load, meter, chains; the two apps import
only chains. Not a benchmark (the leading underscore keeps it out of ``stepchain bench``).
"""
