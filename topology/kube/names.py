"""What a pipeline's Kubernetes objects are called and labelled (pure).

Every object of a pipeline carries :func:`labels`, so a pipeline is found and deleted by
``pipeline_id`` alone; the names are built from :func:`~topology.pipeline.model.step_name`
(``<pipeline_id>-step-<N>``), which the pipeline model keeps short enough for a Service name.
The backend, the renderer and Locust's target lookup all read these, never a copy.
"""

from __future__ import annotations

from stepsvc.protocol import KUBERNETES_HTTP_PORT
from stepsvc.step.config import SOURCE
from topology.pipeline.model import step_name

#: The step's ports inside its pod (a colocated pod's i-th step adds i to each).
GRPC_PORT = 50051
METRICS_PORT = 9464
#: The HTTP face (POST /process, as the Flask-era pipelines) of every step.
HTTP_PORT = KUBERNETES_HTTP_PORT
#: The ConfigMap key (and the step's environment variable) holding its PIPELINE_CONFIG.
CONFIG_KEY = SOURCE
MANAGED_BY = "stepchain-topology"
#: Annotation holding the pipeline's fingerprint (POST of a different body -> 409).
FINGERPRINT_ANNOTATION = "stepchain.io/pipeline-sha256"
STEP_TYPE_ANNOTATION = "stepchain.io/step-type"
CONFIG_HASH_ANNOTATION = "stepchain.io/config-sha256"
#: Label on the entry step's Service (the NodePort clients and Locust use), whatever its id.
ENTRY_LABEL = "stepchain.io/entry"
#: Label on the colocated Deployment and its pod (the pod runs every step of the pipeline).
COLOCATED_LABEL = "stepchain.io/colocated"
#: The app name every step pod carries.
STEP_APP = "stepchain-step"


def config_map_name(pipeline_id: str, step_id: int) -> str:
    """ConfigMap name of a step: ``<pipeline_id>-step-<N>-config``."""
    return f"{step_name(pipeline_id, step_id)}-config"


def network_policy_name(pipeline_id: str) -> str:
    """The pipeline's NetworkPolicy: ``<pipeline_id>-steps``."""
    return f"{pipeline_id}-steps"


def colocated_name(pipeline_id: str) -> str:
    """Name of a colocated pipeline's one Deployment: ``<pipeline_id>-chain``."""
    return f"{pipeline_id}-chain"


def discovery_config_map_name(pipeline_id: str) -> str:
    """A colocated pipeline's discovery file (step id -> 127.0.0.1:port) as a ConfigMap."""
    return f"{pipeline_id}-chain-discovery"


def labels(pipeline_id: str, step_id: int) -> dict[str, str]:
    """Labels on every object of a step."""
    return {
        "app.kubernetes.io/name": STEP_APP,
        "app.kubernetes.io/part-of": "stepchain",
        "app.kubernetes.io/instance": pipeline_id,
        "app.kubernetes.io/component": f"step-{step_id}",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "pipeline_id": pipeline_id,
        "step_id": str(step_id),
    }


def pipeline_labels(pipeline_id: str, entry_step: int, component: str) -> dict[str, str]:
    """Labels on an object of the whole pipeline (no ``step_id``), e.g. its NetworkPolicy."""
    out = {k: v for k, v in labels(pipeline_id, entry_step).items() if k != "step_id"}
    out["app.kubernetes.io/component"] = component
    return out


def selector_labels(pipeline_id: str, step_id: int) -> dict[str, str]:
    """Pod selector of a step's Deployment and Service (immutable once created)."""
    return {"app.kubernetes.io/name": STEP_APP, "pipeline_id": pipeline_id,
            "step_id": str(step_id)}


def pipeline_pods(pipeline_id: str) -> dict[str, str]:
    """Selects every step pod of the pipeline."""
    return {"app.kubernetes.io/name": STEP_APP, "pipeline_id": pipeline_id}


def colocated_selector(pipeline_id: str) -> dict[str, str]:
    """Selects a colocated pipeline's pods (each runs every step)."""
    return {**pipeline_pods(pipeline_id), COLOCATED_LABEL: "true"}
