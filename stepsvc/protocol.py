"""The names steps and their callers agree on, each written once: the gRPC service and its
methods, and the metadata keys a step sets or reads.

Everything here comes from ``protos/stepchain/v1/step.proto`` where the proto names it; the
metadata keys are stepchain's own (lower-case, as gRPC requires).
"""

from __future__ import annotations

from stepchain.v1 import step_pb2

#: ``stepchain.v1.StepService``, as health checks, reflection and the generic handler name it.
SERVICE_NAME: str = step_pb2.DESCRIPTOR.services_by_name["StepService"].full_name
#: Full method paths, as a channel calls them and interceptors see them.
SERVICE_PREFIX = f"/{SERVICE_NAME}/"
PROCESS_METHOD = f"{SERVICE_PREFIX}Process"
DESCRIBE_METHOD = f"{SERVICE_PREFIX}Describe"
#: Asked once per new address for its shared-memory domain (the answer's initial metadata).
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

#: The per-request overrides a caller may send (``ProcessRequest.overrides``): their names,
#: in field-number order, as the HTTP face's query string and error messages spell them.
OVERRIDE_FIELDS: tuple[tuple[str, int], ...] = tuple(
    (f.name, f.number) for f in sorted(step_pb2.Overrides.DESCRIPTOR.fields,
                                       key=lambda f: f.number))
OVERRIDE_NAMES: tuple[str, ...] = tuple(name for name, _ in OVERRIDE_FIELDS)

#: Trailing metadata a step sets when it refuses because it is draining: worth failing over.
DRAINING_KEY = "stepchain-draining"
#: Trailing metadata on an error that already names the step where it happened.
FAILED_STEP_KEY = "stepchain-failed-step"
#: Initial metadata with which a step advertises its shared-memory domain (frames.shm).
DOMAIN_KEY = "stepchain-shm-domain"
#: Trailing metadata on a refused shared-memory handle from another domain: resend as bytes.
UNSHARED_KEY = "stepchain-shm-unshared"

#: The HTTP face's port in Kubernetes (the rendered Deployments and Services use it).
KUBERNETES_HTTP_PORT = 8080
#: Environment variable the Flask tool's Deployments set for a step's HTTP port.
SERVICE_PORT_ENV = "SERVICE_PORT"
