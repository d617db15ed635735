"""What the topology service lets a caller deploy, and who may write.

* Writes need ``Authorization: Bearer <token>`` unless the service runs with ``--no-auth``
  (:mod:`topology.service.auth`; ``--no-auth`` only on loopback, see
  :func:`topology.service.settings.check_startup`).
* Step images must match one of the allow-list globs.
* hostPath volumes only under allow-listed path prefixes (none by default).
* A pipeline may not ask for more GPUs than ``--max-gpus``.
* A pipeline may only target the namespace the service manages.
"""

from __future__ import annotations

from typing import Any

from topology.pipeline.graph import Pipeline
from topology.pipeline.model import PipelineInvalid
from topology.service.allowlist import hostpath_allowed, image_allowed
from topology.service.settings import Settings


def check_policy(pipeline: Pipeline, settings: Settings) -> None:
    """Raises PipelineInvalid naming every field the service's policy refuses."""
    errors: list[dict[str, Any]] = []

    def fail(loc: tuple[str | int, ...], msg: str) -> None:
        errors.append({"loc": list(loc), "msg": msg, "type": "policy_error"})

    image = pipeline.image or settings.step_image
    if not image_allowed(image, settings.image_allowlist):
        fail(("image",), f"image {image!r} is not allowed; allowed images match "
                         f"{', '.join(settings.image_allowlist) or '(nothing)'} "
                         "(--image-allowlist / STEPCHAIN_IMAGE_ALLOWLIST)")
    # The service manages exactly one namespace (its Role covers only that one; the local
    # backend reports it too): a pipeline naming another is refused, never silently moved.
    if pipeline.namespace is not None and pipeline.namespace != settings.namespace:
        fail(("namespace",), f"this topology service manages namespace {settings.namespace!r}; "
                             f"got {pipeline.namespace!r} (leave namespace out or use that one)")
    total_gpus = 0
    for step in pipeline.steps:
        for i, volume in enumerate(step.volumes):
            if volume.hostPath is not None and not hostpath_allowed(
                    volume.hostPath, settings.hostpath_allowlist):
                allowed = ", ".join(settings.hostpath_allowlist) or "none are allowed"
                fail((*step.loc, "volumes", i, "hostPath"),
                     f"hostPath {volume.hostPath!r} is not under an allowed prefix ({allowed}; "
                     "--hostpath-allowlist / STEPCHAIN_HOSTPATH_ALLOWLIST)")
        replicas = step.autoscale.maxReplicas if step.autoscale else step.replicas
        total_gpus += step.gpu * replicas
        if step.gpu and total_gpus > settings.max_gpus:
            fail((*step.loc, "gpu"),
                 f"the pipeline would use {total_gpus} GPUs up to this step (gpu x replicas, "
                 f"max replicas when autoscaled); at most {settings.max_gpus} are allowed "
                 "(--max-gpus / STEPCHAIN_MAX_GPUS)")
    if errors:
        raise PipelineInvalid(errors)
