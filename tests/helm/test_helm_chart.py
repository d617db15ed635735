"""The Helm chart, checked with a real Helm and the real Kubernetes schemas.

`helm lint --strict` and `helm template` run for the default values, with Jaeger on, and with
every option set (helm/stepchain/ci/all-options-values.yaml); every rendered manifest must
validate strictly (unknown fields are errors) against the oldest Kubernetes the chart declares
and the newest kubernetes-validate knows. Bad values must be refused by values.schema.json.
"""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_fixtures import (
    ALL_VALUE_SETS,
    CHART,
    NAMESPACE,
    RELEASE,
    env_of,
    helm,
    pod_specs,
    render,
)

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))


def _oldest_supported_kubernetes() -> str:
    match = re.match(r">=\s*(\d+\.\d+)", CHART_META["kubeVersion"])
    assert match, f"Chart.yaml kubeVersion {CHART_META['kubeVersion']!r} has no lower bound"
    return match.group(1)


#: The oldest Kubernetes the chart supports and the newest kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = (_oldest_supported_kubernetes(),
                       ".".join(kubernetes_validate.latest_version().split(".")[:2]))


@pytest.mark.parametrize("value_set", list(ALL_VALUE_SETS))
def test_helm_lint_strict_passes(value_set: str) -> None:
    result = helm("lint", "--strict", str(CHART), *ALL_VALUE_SETS[value_set])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", list(ALL_VALUE_SETS))
def test_every_rendered_manifest_validates_against_the_kubernetes_schema(
        value_set: str, version: str) -> None:
    rendering = render(value_set)
    assert rendering.manifests, f"{value_set}: helm template rendered nothing"
    errors = []
    for manifest in rendering.manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: "
                          f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, f"{value_set} against Kubernetes {version}:\n" + "\n".join(errors)


def test_default_values_render_the_topology_service_without_jaeger() -> None:
    kinds = sorted(m["kind"] for m in render("defaults").manifests)
    assert kinds == ["Deployment", "Role", "Role", "RoleBinding", "RoleBinding", "Secret",
                     "Service", "ServiceAccount", "ServiceAccount"]


def test_all_options_render_every_optional_resource() -> None:
    kinds = {m["kind"] for m in render("all-options").manifests}
    assert {"NetworkPolicy", "Deployment", "Service", "Role", "RoleBinding",
            "ServiceAccount"} <= kinds
    # auth.existingSecret is set: the chart must not create a token Secret of its own.
    assert "Secret" not in kinds


@pytest.mark.parametrize(("args", "where"), [
    (("--set", "replicaCount=two"), "/replicaCount"),
    (("--set", "replicasCount=2"), "additional properties 'replicasCount' not allowed"),
    (("--set", "service.port=-1"), "/service/port"),
    (("--set", "service.port=70000"), "/service/port"),
    (("--set", "service.type=Ingress"), "/service/type"),
    (("--set", "image.pullPolicy=Sometimes"), "/image/pullPolicy"),
    (("--set", "otel.protocol=thrift"), "/otel/protocol"),
    (("--set", "otel.endpoint=jaeger:4317"), "/otel/endpoint"),
    (("--set", "maxGpus=-1"), "/maxGpus"),
    (("--set", "hostPathAllowlist[0]=data/relative"), "/hostPathAllowlist/0"),
    (("--set", "jaeger.enabled=yes-please"), "/jaeger/enabled"),
    (("--set", "jaeger.storage=badger"), "additional properties 'storage' not allowed"),
    (("--set", "resources.requests.cpu=lots"), "/resources/requests/cpu"),
    (("--set", "podAnnotations.replicas=3"), "/podAnnotations/replicas"),
])
def test_values_schema_rejects_bad_values_naming_the_key(args: tuple[str, ...],
                                                         where: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr, result.stderr


def _restricted_violations(where: str, pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the restricted Pod Security Standard (and our image policy)."""
    problems = []
    pod_ctx = pod.get("securityContext", {})
    if pod_ctx.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append(f"{where}: uses host namespaces")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{where}: hostPath volume {volume['name']}")
    tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in pod.get("initContainers", []) + pod["containers"]:
        name = f"{where}/{container['name']}"
        ctx = container.get("securityContext", {})
        expected = {"runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False}
        for key, value in expected.items():
            if ctx.get(key) != value:
                problems.append(f"{name}: securityContext.{key} is {ctx.get(key)!r}, "
                                f"not {value!r}")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop is not [ALL]")
        if ctx.get("capabilities", {}).get("add"):
            problems.append(f"{name}: adds capabilities")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        # A read-only root needs somewhere writable for temporary files.
        if not any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes
                   for m in container.get("volumeMounts", [])):
            problems.append(f"{name}: no writable emptyDir on /tmp")
        if "resources" not in container or "limits" not in container["resources"]:
            problems.append(f"{name}: no resource limits")
    return problems


@pytest.mark.parametrize("value_set", list(ALL_VALUE_SETS))
def test_every_container_runs_with_the_restricted_security_context(value_set: str) -> None:
    specs = pod_specs(render(value_set))
    assert specs
    problems = [p for name, pod in specs for p in _restricted_violations(name, pod)]
    assert not problems, "\n".join(problems)


def test_jaeger_is_a_single_binary_with_otlp_and_ui_ports() -> None:
    rendering = render("jaeger")
    deployment = rendering.one("Deployment", "jaeger")
    service = rendering.one("Service", "jaeger")
    assert deployment["spec"]["replicas"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("jaegertracing/jaeger:2.")
    assert {p["containerPort"] for p in container["ports"]} >= {4317, 4318, 16686}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp-grpc": 4317, "otlp-http": 4318, "ui": 16686}
    # The Service must reach the Jaeger pods and nothing else.
    selector = service["spec"]["selector"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    topology_labels = rendering.one("Deployment", "topology")["spec"]["template"]["metadata"][
        "labels"]
    assert not selector.items() <= topology_labels.items()


def _topology_container(value_set: str) -> dict[str, Any]:
    deployment = render(value_set).one("Deployment", "topology")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_jaeger_enabled_sends_every_trace_to_the_bundled_jaeger() -> None:
    rendering = render("jaeger")
    env = env_of(_topology_container("jaeger"))
    jaeger_service = rendering.one("Service", "jaeger")["metadata"]["name"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == \
        f"http://{jaeger_service}.{NAMESPACE}.svc:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert "OTEL_TRACES_EXPORTER" not in env


def test_jaeger_over_otlp_http_uses_port_4318() -> None:
    env = env_of(_topology_container_with("jaeger", "--set", "otel.protocol=http/protobuf"))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].endswith(".svc:4318")


def _topology_container_with(value_set: str, *extra: str) -> dict[str, Any]:
    deployment = render(value_set, *extra).one("Deployment", "topology")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_an_explicit_otel_endpoint_wins_over_the_bundled_jaeger() -> None:
    env = env_of(_topology_container("all-options"))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == \
        "http://otel-collector.observability.svc:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == \
        "deployment.environment=production,k8s.cluster.name=lab"


def test_without_a_collector_trace_export_is_switched_off() -> None:
    env = env_of(_topology_container("defaults"))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["OTEL_TRACES_EXPORTER"]["value"] == "none"


def test_topology_service_manages_the_release_namespace() -> None:
    env = env_of(_topology_container("defaults"))
    assert env["STEPCHAIN_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    for manifest in render("all-options").manifests:
        assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]["name"]


def test_default_step_image_is_the_only_allowed_image() -> None:
    env = env_of(_topology_container("defaults"))
    version = CHART_META["appVersion"]
    assert env["STEPCHAIN_STEP_IMAGE"]["value"] == f"stepchain-step:{version}"
    assert env["STEPCHAIN_IMAGE_ALLOWLIST"]["value"] == "stepchain-step:*,stepchain-step@*"
    assert env["STEPCHAIN_HOSTPATH_ALLOWLIST"]["value"] == ""
    assert env["STEPCHAIN_MAX_GPUS"]["value"] == "0"


def test_generated_token_secret_is_mounted_as_the_token_file() -> None:
    rendering = render("defaults")
    secret = rendering.one("Secret", "topology")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    pod = rendering.one("Deployment", "topology")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    token_file = Path(env_of(container)["STEPCHAIN_TOKEN_FILE"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "token", "path": token_file.name}]


def test_existing_secret_is_used_instead_of_a_generated_one() -> None:
    pod = render("all-options").one("Deployment", "topology")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "stepchain-api-token"
    assert volume["secret"]["items"] == [{"key": "api-token", "path": "token"}]


def test_probes_check_healthz_on_the_api_port() -> None:
    container = _topology_container("defaults")
    (port,) = container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = render("defaults").one("Service", "topology")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def _settings_for(value_set: str, tmp_path: Path) -> Any:
    """The topology service's Settings built from the chart's args and env, the way the
    container starts: fieldRefs resolved, the token file written from the Secret."""
    from stepsvc.cli import build_parser
    from topology.service.settings import settings_from

    rendering = render(value_set)
    container = _topology_container(value_set)
    environ: dict[str, str] = {}
    for name, entry in env_of(container).items():
        if "valueFrom" in entry:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
            environ[name] = NAMESPACE
        else:
            environ[name] = entry["value"]
    secrets = rendering.of_kind("Secret")
    token = (base64.b64decode(secrets[0]["data"]["token"]).decode() if secrets
             else "an-existing-secret-token-of-32-chars")
    token_file = tmp_path / "token"
    token_file.write_text(token, encoding="utf-8")
    environ["STEPCHAIN_TOKEN_FILE"] = str(token_file)
    args: argparse.Namespace = build_parser().parse_args(container["args"])
    return settings_from(vars(args), environ)


@pytest.mark.parametrize("value_set", list(ALL_VALUE_SETS))
def test_topology_service_accepts_the_configuration_the_chart_gives_it(
        value_set: str, tmp_path: Path) -> None:
    settings = _settings_for(value_set, tmp_path)
    assert settings.backend == "kubernetes"
    assert settings.host == "0.0.0.0" and settings.port == 8080
    assert settings.namespace == NAMESPACE
    assert settings.token is not None
    expected_account = {"defaults": "demo-stepchain-step", "jaeger": "demo-stepchain-step",
                        "all-options": "pipeline-step", "external-identities": "stepchain-step"}
    assert settings.step_service_account == expected_account[value_set]


def test_all_options_reach_the_topology_service_settings(tmp_path: Path) -> None:
    settings = _settings_for("all-options", tmp_path)
    assert settings.step_image == "registry.example.com:5000/stepchain/step:0.1.0-rc1"
    assert settings.image_allowlist == ("registry.example.com:5000/stepchain/*",
                                        "registry.example.com:5000/team-a/*")
    assert settings.hostpath_allowlist == ("/data/images", "/mnt/scratch")
    assert settings.max_gpus == 2
    assert settings.drain_grace_s == 45
    assert settings.otel_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
        "http://otel-collector.observability.svc:4318"


def test_notes_explain_how_to_post_a_pipeline_and_open_jaeger() -> None:
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                  "--set", "jaeger.enabled=true")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    rendering = render("jaeger")
    secret = rendering.one("Secret", "topology")["metadata"]["name"]
    jaeger = rendering.one("Service", "jaeger")["metadata"]["name"]
    assert f"get secret {secret}" in notes
    assert "Authorization: Bearer $TOKEN" in notes
    assert "POST http://127.0.0.1:8080/pipeline" in notes
    assert "grpcurl -plaintext -d @ $NODE_IP:$NODE_PORT stepchain.v1.StepService/Process" in notes
    assert f"port-forward service/{jaeger} 16686:16686" in notes


def test_externally_managed_identities_render_no_accounts_or_roles() -> None:
    rendering = render("external-identities")
    assert not rendering.of_kind("ServiceAccount")
    assert not rendering.of_kind("Role") and not rendering.of_kind("RoleBinding")
    pod = rendering.one("Deployment", "topology")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "stepchain-topology"
    env = env_of(pod["containers"][0])
    assert env["STEPCHAIN_STEP_SERVICE_ACCOUNT"]["value"] == "stepchain-step"
