"""Kubernetes backend: applies the rendered manifests with the official client.

Apply is idempotent: objects of the pipeline that exist are server-side-applied (PATCH
``application/apply-patch+yaml``, field manager ``stepchain-topology``), missing ones created,
and objects labelled with the pipeline that the new rendering no longer has are deleted — so a
re-POST or a PUT converges. Objects are always found by listing and checking the labels here
(never trusting the server's label filtering alone). Status comes from the Deployments' ready
replicas. Only the verbs in :data:`REQUIRED_PERMISSIONS` are used; the Helm chart's Role grants
exactly those.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepsvc.step.config import parse_config
from topology.backend import ApplyResult, BackendError, PipelineStatus, RouteStep, StepStatus
from topology.kube.manifests import render_manifests
from topology.kube.names import (
    COLOCATED_LABEL,
    CONFIG_KEY,
    FINGERPRINT_ANNOTATION,
    GRPC_PORT,
    HTTP_PORT,
    MANAGED_BY,
    STEP_TYPE_ANNOTATION,
    config_map_name,
)
from topology.kube.objects import RenderOptions, is_headless
from topology.pipeline.graph import Pipeline
from topology.pipeline.model import step_name

#: (apiGroup, resource, verbs) — everything this backend calls, nothing more.
REQUIRED_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("", "configmaps", ("create", "delete", "list", "patch")),
    ("", "services", ("create", "delete", "list", "patch")),
    ("apps", "deployments", ("create", "delete", "list", "patch")),
    ("autoscaling", "horizontalpodautoscalers", ("create", "delete", "list", "patch")),
    ("networking.k8s.io", "networkpolicies", ("create", "delete", "list", "patch")),
    # The Indexed Job of each batch job (topology.jobs.kube_job), on this backend's client.
    ("batch", "jobs", ("create", "delete", "get")),
)
FIELD_MANAGER = MANAGED_BY
#: Annotation of the entry step's ConfigMap holding the pipeline JSON as submitted.
SPEC_ANNOTATION = "stepchain.io/pipeline-spec"
#: Annotations of one object may hold 256 KiB in all; a larger spec is not kept.
MAX_SPEC_ANNOTATION = 200_000
PIPELINE_LABEL = "pipeline_id"
STEP_LABEL = "step_id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
REQUEST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class _Kind:
    """How to call the API for one kind: which API class and its method suffix."""

    kind: str
    api: str  # attribute of kubernetes.client
    suffix: str  # e.g. "config_map" in create_namespaced_config_map


KINDS: tuple[_Kind, ...] = (
    _Kind("ConfigMap", "CoreV1Api", "config_map"),
    _Kind("Service", "CoreV1Api", "service"),
    _Kind("Deployment", "AppsV1Api", "deployment"),
    _Kind("HorizontalPodAutoscaler", "AutoscalingV2Api", "horizontal_pod_autoscaler"),
    _Kind("NetworkPolicy", "NetworkingV1Api", "network_policy"),
)
#: Deletion order: entry points and scalers first, ConfigMaps (= discovery) last; the fence
#: goes after the pods it fences.
DELETE_ORDER = ("HorizontalPodAutoscaler", "Service", "Deployment", "NetworkPolicy", "ConfigMap")


class KubernetesRefused(BackendError):
    """The API server answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KubernetesBackend:
    """Deploys pipelines into one namespace of a Kubernetes cluster."""

    name = "kubernetes"

    def __init__(self, api_client: Any, options: RenderOptions) -> None:
        from kubernetes import client

        self.namespace = options.namespace
        self.options = options
        self._client = api_client
        self._apis = {name: getattr(client, name)(api_client)
                      for name in {k.api for k in KINDS}}
        self._lock = threading.Lock()

    @property
    def api_client(self) -> Any:
        """The client this backend calls the API server with (the jobs' Indexed Jobs too)."""
        return self._client

    @classmethod
    def from_environment(cls, options: RenderOptions) -> KubernetesBackend:
        """In-cluster credentials when running in a pod, else the local kubeconfig."""
        from stepsvc.routing.kubernetes import load_api_client

        try:
            api_client = load_api_client("the kubernetes backend")
        except ValueError as exc:
            raise BackendError(f"no Kubernetes credentials: {exc}") from None
        return cls(api_client, options)

    # -- the Backend protocol ------------------------------------------------------------------

    def apply(self, pipeline: Pipeline) -> ApplyResult:
        """Creates/updates every object of `pipeline` and deletes its stale ones."""
        options = self.options if pipeline.namespace in (None, self.namespace) else None
        if options is None:
            raise BackendError(f"pipeline namespace {pipeline.namespace!r} is not the managed "
                               f"namespace {self.namespace!r}")
        manifests = _with_spec(render_manifests(pipeline, options), pipeline)
        with self._lock:
            existing = self._owned(pipeline.pipeline_id)
            wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
            headless = {m["metadata"]["name"]: is_headless(m) for m in self._list("Service")
                        if _owned_by(m, pipeline.pipeline_id)}
            for manifest in manifests:
                key = (manifest["kind"], manifest["metadata"]["name"])
                if key[0] == "Service" and key in existing \
                        and headless.get(key[1]) != is_headless(manifest):
                    # clusterIP is immutable: a Service turning headless (a pipeline made before
                    # replicas were balanced, or a new entry step) is replaced, not patched.
                    self._delete("Service", key[1])
                    existing.discard(key)
                if key in existing:
                    self._call(manifest["kind"], "patch", name=key[1], body=manifest,
                               field_manager=FIELD_MANAGER, force=True,
                               _content_type="application/apply-patch+yaml")
                else:
                    self._call(manifest["kind"], "create", body=manifest)
            for kind in DELETE_ORDER:
                for key in sorted(existing):
                    if key[0] == kind and key not in wanted:
                        self._delete(kind, key[1])
            services = {m["metadata"]["name"]: m for m in self._list("Service")
                        if _owned_by(m, pipeline.pipeline_id)}
        entry = step_name(pipeline.pipeline_id, pipeline.entry_step)
        return ApplyResult(
            pipeline_id=pipeline.pipeline_id,
            resources=[{"kind": m["kind"], "name": m["metadata"]["name"],
                        "namespace": self.namespace} for m in manifests],
            entrypoint=self._service_address(entry),
            http_entrypoint=self._http_url(entry),
            details=_node_port_details(services.get(entry)),
        )

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        """Readiness per step from its Deployment; None when nothing of the pipeline exists."""
        config_maps = [m for m in self._list("ConfigMap") if _owned_by(m, pipeline_id)]
        deployments = [m for m in self._list("Deployment") if _owned_by(m, pipeline_id)]
        if not config_maps and not deployments:
            return None
        services = [m for m in self._list("Service") if _owned_by(m, pipeline_id)]
        return self._status(pipeline_id, config_maps, deployments, services)

    def list_pipelines(self) -> list[PipelineStatus]:
        """Every pipeline with objects managed by this service in the namespace."""
        config_maps, deployments, services = (self._list(k)
                                              for k in ("ConfigMap", "Deployment", "Service"))
        ids = sorted({_labels(m)[PIPELINE_LABEL] for m in [*config_maps, *deployments]
                      if _labels(m).get(MANAGED_BY_LABEL) == MANAGED_BY
                      and PIPELINE_LABEL in _labels(m)})
        return [self._status(pid, [m for m in config_maps if _owned_by(m, pid)],
                             [m for m in deployments if _owned_by(m, pid)],
                             [m for m in services if _owned_by(m, pid)]) for pid in ids]

    def delete(self, pipeline_id: str) -> bool:
        """Deletes every object labelled with the pipeline; False when there was none."""
        with self._lock:
            existing = self._owned(pipeline_id)
            for kind in DELETE_ORDER:
                for key in sorted(existing):
                    if key[0] == kind:
                        self._delete(kind, key[1])
        return bool(existing)

    def close(self) -> None:
        """Closes the HTTP connection pool (the cluster objects stay)."""
        self._client.close()

    # -- helpers -------------------------------------------------------------------------------

    def _status(self, pipeline_id: str, config_maps: list[dict[str, Any]],
                deployments: list[dict[str, Any]],
                services: list[dict[str, Any]]) -> PipelineStatus:
        by_step: dict[int, dict[str, Any]] = {}
        # a `colocate: true` pipeline: one Deployment (no step label) runs every step
        chain = next((d for d in deployments if _labels(d).get(COLOCATED_LABEL) == "true"), {})
        for d in deployments:
            step_label = _labels(d).get(STEP_LABEL, "")
            if step_label.isdigit():
                by_step[int(step_label)] = d
        steps_ids = sorted({int(_labels(m)[STEP_LABEL]) for m in [*config_maps, *deployments]
                            if _labels(m).get(STEP_LABEL, "").isdigit()})
        types = {int(_labels(m)[STEP_LABEL]): _annotations(m).get(STEP_TYPE_ANNOTATION, "")
                 for m in config_maps if _labels(m).get(STEP_LABEL, "").isdigit()}
        steps = []
        for sid in steps_ids:
            d = by_step.get(sid) or chain
            wanted = int((d.get("spec") or {}).get("replicas", 1) or 0) if d else 0
            ready = int((d.get("status") or {}).get("readyReplicas") or 0)
            steps.append(StepStatus(
                step_id=sid, type=types.get(sid, ""), ready=bool(d) and ready >= max(wanted, 1),
                ready_replicas=ready, replicas=wanted,
                address=self._service_address(step_name(pipeline_id, sid))))
        entry_service = next((s for s in services
                              if (s.get("spec") or {}).get("type") == "NodePort"), None)
        fingerprint = next((_annotations(m).get(FINGERPRINT_ANNOTATION, "")
                            for m in [*config_maps, *deployments]), "")
        entrypoint = (self._service_address(entry_service["metadata"]["name"])
                      if entry_service else None)
        entry_label = _labels(entry_service).get(STEP_LABEL, "") if entry_service else ""
        return PipelineStatus(pipeline_id=pipeline_id, namespace=self.namespace,
                              fingerprint=fingerprint, entrypoint=entrypoint,
                              steps=tuple(steps), details=_node_port_details(entry_service),
                              graph=_routing_graph(config_maps),
                              spec=_submitted_spec(config_maps),
                              http_entrypoint=(self._http_url(entry_service["metadata"]["name"])
                                               if entry_service else None),
                              entry_step=int(entry_label) if entry_label.isdigit() else None)

    def _service_address(self, service: str) -> str:
        # Resolvable inside the cluster; from outside use a node address and the nodePort.
        return f"{service}.{self.namespace}.svc:{GRPC_PORT}"

    def _http_url(self, service: str) -> str:
        # The HTTP face; from outside: http://<node>:<details.http_node_port>/process.
        return f"http://{service}.{self.namespace}.svc:{HTTP_PORT}"

    def _owned(self, pipeline_id: str) -> set[tuple[str, str]]:
        return {(k.kind, m["metadata"]["name"]) for k in KINDS for m in self._list(k.kind)
                if _owned_by(m, pipeline_id)}

    def _method(self, kind: str, verb: str) -> Callable[..., Any]:
        spec = next(k for k in KINDS if k.kind == kind)
        return getattr(self._apis[spec.api], f"{verb}_namespaced_{spec.suffix}")  # type: ignore[no-any-return]

    def _call(self, kind: str, verb: str, **kwargs: Any) -> Any:
        import urllib3
        from kubernetes.client.rest import ApiException

        what = f"{verb} {kind} {kwargs.get('name') or _name_of(kwargs.get('body'))}".rstrip()
        try:
            response = self._method(kind, verb)(
                namespace=self.namespace, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as exc:
            raise KubernetesRefused(f"Kubernetes refused {what} in namespace {self.namespace}: "
                                    f"{exc.status} {_reason(exc)}", int(exc.status or 0)) \
                from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, DNS, TLS, timeouts
            raise BackendError(f"cannot reach the Kubernetes API for {what}: {exc}") from None
        status = int(getattr(response, "status", 200))
        if status >= 400:
            raise KubernetesRefused(f"Kubernetes refused {what} in namespace {self.namespace}: "
                                    f"HTTP {status} {_text(response)[:300]}", status)
        return response

    def _list(self, kind: str) -> list[dict[str, Any]]:
        # The label selector narrows the answer on a real API server; the labels are checked
        # again by the caller because not every server (kmock) applies it.
        response = self._call(kind, "list", label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")
        items = json.loads(_text(response) or "{}").get("items") or []
        return [i for i in items if isinstance(i, dict)
                and (i.get("metadata") or {}).get("namespace", self.namespace) == self.namespace]

    def _delete(self, kind: str, name: str) -> None:
        try:
            self._call(kind, "delete", name=name, propagation_policy="Background")
        except KubernetesRefused as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise


def _with_spec(manifests: list[dict[str, Any]], pipeline: Pipeline) -> list[dict[str, Any]]:
    """`manifests` with the pipeline JSON as submitted on the entry step's ConfigMap (what GET
    returns as `spec`); left out when too large for an annotation."""
    if pipeline.source is None:
        return manifests
    text = json.dumps(pipeline.source, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_SPEC_ANNOTATION:
        return manifests
    entry = config_map_name(pipeline.pipeline_id, pipeline.entry_step)
    for manifest in manifests:
        if manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"] == entry:
            manifest["metadata"]["annotations"][SPEC_ANNOTATION] = text
    return manifests


def _submitted_spec(config_maps: list[dict[str, Any]]) -> dict[str, Any] | None:
    for config_map in config_maps:
        text = _annotations(config_map).get(SPEC_ANNOTATION)
        if text:
            try:
                spec = json.loads(text)
            except ValueError:
                continue
            if isinstance(spec, dict):
                return spec
    return None


def _routing_graph(config_maps: list[dict[str, Any]]) -> tuple[RouteStep, ...]:
    """The steps of the routing graph, from the first ConfigMap whose PIPELINE_CONFIG parses
    (every step's holds the whole graph)."""
    for config_map in config_maps:
        text = (config_map.get("data") or {}).get(CONFIG_KEY)
        if isinstance(text, str):
            try:
                return tuple(parse_config(text).steps)
            except ValueError:
                continue
    return ()


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _owned_by(obj: dict[str, Any], pipeline_id: str) -> bool:
    labels = _labels(obj)
    return labels.get(PIPELINE_LABEL) == pipeline_id \
        and labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def _node_port_details(service: dict[str, Any] | None) -> dict[str, Any]:
    if not service:
        return {}
    details: dict[str, Any] = {"service": service["metadata"]["name"]}
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("name") == "grpc" and port.get("nodePort"):
            details["node_port"] = int(port["nodePort"])
        if port.get("name") == "http" and port.get("nodePort"):
            details["http_node_port"] = int(port["nodePort"])
    return details


def _name_of(body: Any) -> str:
    return ((body or {}).get("metadata") or {}).get("name", "") if isinstance(body, dict) else ""


def _text(response: Any) -> str:
    data = getattr(response, "data", b"")
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")


def _reason(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.reason))
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
