"""The manifest renderer: valid Kubernetes objects, the agreed names, labels and settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stepsvc.step.config import parse_config
from topology.kube.manifests import manifests_yaml, render_manifests
from topology.kube.objects import RenderOptions
from topology.pipeline.graph import parse_pipeline

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
GOLDEN = ROOT / "tests" / "golden" / "pipeline.yaml"
#: Set to regenerate the golden file after an intended change: STEPCHAIN_UPDATE_GOLDEN=1.
UPDATE_GOLDEN = os.environ.get("STEPCHAIN_UPDATE_GOLDEN") == "1"
KUBERNETES_VERSION = "1.30"
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of",
                   "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "pipeline_id",
                   "step_id")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def render(data: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    return render_manifests(parse_pipeline(data), RenderOptions(**options))


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


DEMO_WITH_EVERYTHING = {
    "name": "full",
    "steps": [
        {"type": "classify", "next_step": [1, 2], "preferred_next": 1, "route": {"blurry": 2}},
        {"type": "grayscale", "gpu": 2, "nodeSelector": {"accelerator": "a100"}, "next_step": 3,
         "volumes": [{"name": "models", "mountPath": "/models", "readOnly": True,
                      "hostPath": "/srv/models"},
                     {"name": "cfg", "mountPath": "/config/extra", "configMap": "extra"}]},
        {"type": "deblur", "autoscale": {"minReplicas": 1, "maxReplicas": 3}, "next_step": 3},
        {"type": "resize", "params": {"scale": 0.5}},
    ],
}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_renders_objects_valid_against_the_kubernetes_schemas(example: Path) -> None:
    manifests = render(load(example), namespace="stepchain")
    assert manifests
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_a_pipeline_using_every_step_option_renders_valid_objects() -> None:
    manifests = render(DEMO_WITH_EVERYTHING, otel_env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317"},
                       service_account="stepchain-step")
    assert {m["kind"] for m in manifests} == {"ConfigMap", "Service", "Deployment",
                                             "HorizontalPodAutoscaler", "NetworkPolicy"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_rendering_examples_pipeline_matches_the_golden_yaml() -> None:
    text = manifests_yaml(render(load(ROOT / "examples" / "pipeline.json"),
                                 namespace="stepchain"))
    if UPDATE_GOLDEN:
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), (
        "rendered manifests changed; if intended, regenerate with STEPCHAIN_UPDATE_GOLDEN=1")


def test_each_step_gets_a_configmap_deployment_and_service_named_after_the_pipeline() -> None:
    manifests = render(load(ROOT / "examples" / "pipeline.json"))
    assert set(by_kind(manifests, "ConfigMap")) == {f"demo-step-{n}-config" for n in range(4)}
    assert set(by_kind(manifests, "Deployment")) == {f"demo-step-{n}" for n in range(4)}
    assert set(by_kind(manifests, "Service")) == {f"demo-step-{n}" for n in range(4)}


def test_only_the_entry_step_service_is_a_nodeport() -> None:
    services = by_kind(render(load(ROOT / "examples" / "pipeline.json")), "Service")
    types = {name: s["spec"]["type"] for name, s in services.items()}
    assert types == {"demo-step-0": "NodePort", "demo-step-1": "ClusterIP",
                     "demo-step-2": "ClusterIP", "demo-step-3": "ClusterIP"}


def test_the_entry_service_is_labelled_as_the_entry_whatever_the_entry_steps_id() -> None:
    # Step 3 is the entry (nothing points to it); step 0 is in the middle.
    services = by_kind(render({"name": "late", "steps": [
        {"step_id": 3, "type": "classify", "next_step": 0},
        {"step_id": 0, "type": "grayscale", "next_step": 1},
        {"step_id": 1, "type": "resize", "params": {"scale": 0.5}}]}), "Service")
    entry = {name for name, s in services.items()
             if s["metadata"]["labels"].get("stepchain.io/entry") == "true"}
    assert entry == {"late-step-3"}
    assert services["late-step-3"]["spec"]["type"] == "NodePort"
    assert services["late-step-3"]["metadata"]["labels"]["pipeline_id"] == "late"
    assert services["late-step-0"]["spec"]["type"] == "ClusterIP"


def test_every_step_an_upstream_step_forwards_to_has_a_headless_service() -> None:
    services = by_kind(render(DEMO_WITH_EVERYTHING), "Service")
    headless = {name for name, s in services.items() if s["spec"].get("clusterIP") == "None"}
    # DNS answers each ready pod's address, so round_robin reaches every replica.
    assert headless == {"full-step-1", "full-step-2", "full-step-3"}
    assert services["full-step-0"]["spec"]["type"] == "NodePort"
    assert "clusterIP" not in services["full-step-0"]["spec"]


def test_a_headless_service_selects_the_same_pods_as_its_deployment() -> None:
    manifests = render(DEMO_WITH_EVERYTHING)
    deployments = by_kind(manifests, "Deployment")
    for name, service in by_kind(manifests, "Service").items():
        assert service["spec"]["selector"] == \
            deployments[name]["spec"]["selector"]["matchLabels"], name


def test_steps_close_client_connections_after_a_maximum_age_so_clients_re_resolve() -> None:
    for name, deployment in by_kind(render(DEMO_WITH_EVERYTHING), "Deployment").items():
        args = container(deployment)["args"]
        assert args[args.index("--max-connection-age") + 1] == "30", name



def test_network_policy_leaves_the_entry_open_and_fences_every_other_step_to_the_pipeline(
) -> None:
    manifests = render(load(ROOT / "examples" / "pipeline.json"), namespace="stepchain")
    (policy,) = by_kind(manifests, "NetworkPolicy").values()
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    assert policy["metadata"]["name"] == "demo-steps"
    assert policy["metadata"]["labels"]["pipeline_id"] == "demo"
    selector = policy["spec"]["podSelector"]
    assert selector["matchLabels"]["pipeline_id"] == "demo"
    # Which step pods the policy selects (= fences): all but the entry step.
    pods = {name: d["spec"]["template"]["metadata"]["labels"]
            for name, d in by_kind(manifests, "Deployment").items()}
    fenced = {name for name, pod_labels in pods.items()
              if all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())
              and all(pod_labels.get(e["key"]) not in e["values"]
                      for e in selector["matchExpressions"])}
    assert fenced == {"demo-step-1", "demo-step-2", "demo-step-3"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = policy["spec"]["ingress"][0]
    assert peers == {"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "stepchain-step", "pipeline_id": "demo"}}}]}
    # Only the metrics port is open beyond the pipeline (in-cluster scrapers).
    assert policy["spec"]["ingress"][1] == {"ports": [{"port": 9464, "protocol": "TCP"}]}


def test_single_step_pipeline_has_no_network_policy() -> None:
    manifests = render({"name": "one", "steps": [{"type": "identity"}]})
    assert not by_kind(manifests, "NetworkPolicy")


def test_step_services_carry_grpc_and_http_so_the_nodeport_does_not_expose_metrics() -> None:
    services = by_kind(render(DEMO_WITH_EVERYTHING), "Service")
    assert len(services) == 4
    for name, service in services.items():
        assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            ("grpc", 50051, "grpc"), ("http", 8080, "http")], name


def test_every_step_serves_its_http_face_on_the_port_its_service_names() -> None:
    for name, deployment in by_kind(render(DEMO_WITH_EVERYTHING), "Deployment").items():
        c = container(deployment)
        assert c["args"][c["args"].index("--http-port") + 1] == "8080", name
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in c["ports"]


def test_every_step_pod_announces_its_metrics_port_to_prometheus() -> None:
    for name, deployment in by_kind(render(DEMO_WITH_EVERYTHING), "Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert {k: annotations[k] for k in annotations if k.startswith("prometheus.io/")} == {
            "prometheus.io/scrape": "true", "prometheus.io/port": "9464",
            "prometheus.io/path": "/metrics"}, name
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in \
            container(deployment)["ports"]


def test_every_object_carries_the_pipeline_and_step_labels() -> None:
    for manifest in render(DEMO_WITH_EVERYTHING):
        labels = manifest["metadata"]["labels"]
        if manifest["kind"] == "NetworkPolicy":  # one per pipeline, of no single step
            assert labels["pipeline_id"] == "full" and "step_id" not in labels
            assert labels["app.kubernetes.io/managed-by"] == "stepchain-topology"
            continue
        assert all(key in labels for key in REQUIRED_LABELS), manifest["metadata"]["name"]
        assert labels["pipeline_id"] == "full"
        assert labels["app.kubernetes.io/part-of"] == "stepchain"
        assert manifest["metadata"]["name"].startswith(f"full-step-{labels['step_id']}")


def test_configmap_holds_the_step_config_the_step_server_parses() -> None:
    config_maps = by_kind(render(load(ROOT / "examples" / "pipeline.json")), "ConfigMap")
    cfg = parse_config(config_maps["demo-step-0-config"]["data"]["PIPELINE_CONFIG"])
    assert cfg.pipeline_id == "demo"
    assert cfg.step_id == 0
    entry = cfg.this_step()
    assert (entry.type, entry.next_step, entry.preferred_next, entry.route) == (
        "classify", [1, 2], 1, {"blurry": 2})
    assert parse_config(config_maps["demo-step-2-config"]["data"]["PIPELINE_CONFIG"]).step_id == 2


def _config_hashes(manifests: list[dict[str, Any]]) -> dict[str, str]:
    return {name: d["spec"]["template"]["metadata"]["annotations"]["stepchain.io/config-sha256"]
            for name, d in by_kind(manifests, "Deployment").items()}


def test_changing_one_steps_params_changes_only_that_steps_pod_template() -> None:
    demo = load(ROOT / "examples" / "pipeline.json")
    before = _config_hashes(render(demo))
    changed = json.loads(json.dumps(demo))
    changed["steps"][3]["params"] = {"scale": 0.25}
    after = _config_hashes(render(changed))
    assert {name for name in before if before[name] != after[name]} == {"demo-step-3"}
    # Every ConfigMap still carries the whole graph with the new params.
    assert "scale: 0.25" in by_kind(render(changed), "ConfigMap")["demo-step-0-config"]["data"][
        "PIPELINE_CONFIG"]


def test_changing_the_routing_rolls_every_step() -> None:
    demo = load(ROOT / "examples" / "pipeline.json")
    before = _config_hashes(render(demo))
    changed = json.loads(json.dumps(demo))
    changed["steps"][0]["preferred_next"] = 2
    after = _config_hashes(render(changed))
    assert all(before[name] != after[name] for name in before)


def test_a_colocated_pod_rolls_when_any_steps_params_change() -> None:
    demo = load(ROOT / "examples" / "pipeline.json") | {"colocate": True}
    before = _config_hashes(render(demo))
    changed = json.loads(json.dumps(demo))
    changed["steps"][3]["params"] = {"scale": 0.25}
    after = _config_hashes(render(changed))
    assert list(before) == ["demo-chain"] and before != after


def test_deployment_runs_step_serve_from_the_configmap_with_grpc_probes() -> None:
    deployment = by_kind(render(load(ROOT / "examples" / "pipeline.json"), image="reg/x:1"),
                         "Deployment")["demo-step-1"]
    c = container(deployment)
    assert c["image"] == "reg/x:1"
    assert c["args"][:10] == ["step", "serve", "--config-env", "PIPELINE_CONFIG", "--port",
                              "50051", "--discovery", "kubernetes", "--metrics-port", "9464"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 50051, "http": 8080,
                                                                   "metrics": 9464}
    assert c["readinessProbe"]["grpc"] == {"port": 50051}
    assert c["livenessProbe"]["grpc"] == {"port": 50051}
    env = env_of(deployment)
    assert env["PIPELINE_CONFIG"] == {"configMapKeyRef": {"name": "demo-step-1-config",
                                                          "key": "PIPELINE_CONFIG"}}
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["OTEL_SERVICE_NAME"] == "demo-step-1"


def test_otel_settings_of_the_service_pass_through_but_the_service_name_is_per_step() -> None:
    deployment = by_kind(render(load(ROOT / "examples" / "pipeline.json"), otel_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_SERVICE_NAME": "topology",
        "OTEL_TRACES_SAMPLER": "always_on"}), "Deployment")["demo-step-3"]
    env = env_of(deployment)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "always_on"
    assert env["OTEL_SERVICE_NAME"] == "demo-step-3"


def test_pods_run_restricted_non_root_with_a_read_only_root() -> None:
    deployment = by_kind(render(load(ROOT / "examples" / "pipeline.json")),
                         "Deployment")["demo-step-0"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(deployment)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable place is an emptyDir at /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container(deployment)["volumeMounts"]


def test_termination_grace_covers_the_step_drain_plus_a_margin() -> None:
    deployment = by_kind(render(load(ROOT / "examples" / "pipeline.json"), drain_grace_s=25),
                         "Deployment")["demo-step-0"]
    args = container(deployment)["args"]
    assert args[args.index("--grace") + 1] == "25"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25


def test_gpu_volumes_and_node_selector_reach_the_pod() -> None:
    deployment = by_kind(render(DEMO_WITH_EVERYTHING), "Deployment")["full-step-1"]
    c = container(deployment)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"accelerator": "a100"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["hostPath"] == {"path": "/srv/models"}
    assert volumes["cfg"]["configMap"] == {"name": "extra"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_steps_without_gpu_ask_for_none() -> None:
    deployment = by_kind(render(DEMO_WITH_EVERYTHING), "Deployment")["full-step-0"]
    assert "nvidia.com/gpu" not in container(deployment)["resources"]["limits"]


def test_autoscale_adds_an_hpa_and_leaves_replicas_to_it() -> None:
    manifests = render(DEMO_WITH_EVERYTHING)
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    assert set(hpas) == {"full-step-2"}
    spec = hpas["full-step-2"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "full-step-2"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
    assert "replicas" not in by_kind(manifests, "Deployment")["full-step-2"]["spec"]
    assert by_kind(manifests, "Deployment")["full-step-1"]["spec"]["replicas"] == 1


def test_yaml_output_is_one_document_per_object() -> None:
    manifests = render(load(ROOT / "examples" / "nested.json"))
    docs = [d for d in yaml.safe_load_all(manifests_yaml(manifests)) if d]
    assert docs == manifests


@pytest.mark.parametrize(("quantity", "value"), [
    ("1Gi", 1 << 30), ("256Mi", 256 << 20), ("64Ki", 64 << 10), ("1.5Gi", 3 << 29),
    ("1G", 10**9), ("300M", 3 * 10**8), ("2k", 2000), ("500m", 0.5), ("3", 3), (2, 2)])
def test_kubernetes_quantities_parse_to_numbers(quantity: str | int, value: float) -> None:
    from topology.pipeline.model import parse_quantity

    assert parse_quantity(quantity) == value


@pytest.mark.parametrize("quantity", ["lots", "1GB", "1 Gi", "-1Gi", "", True])
def test_text_that_is_no_quantity_is_refused(quantity: Any) -> None:
    from topology.pipeline.model import parse_quantity

    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(quantity)


@pytest.mark.parametrize(("memory", "max_pixels"), [
    (None, (1 << 30) // 40),          # the default 1Gi limit
    ("512Mi", (512 << 20) // 40),
    ("300M", 7_500_000),
    ("2G", 40_000_000),               # capped at the step server's default
    ("16Gi", 40_000_000),
])
def test_each_step_refuses_images_beyond_what_its_memory_limit_holds(
        memory: str | None, max_pixels: int) -> None:
    from stepsvc.cli import build_parser

    step: dict[str, Any] = {"type": "blur"}
    if memory is not None:
        step["resources"] = {"limits": {"memory": memory}}
    (deployment,) = by_kind(render({"name": "p", "steps": [step]}), "Deployment").values()
    args = container(deployment)["args"]
    assert args[args.index("--max-pixels") + 1] == str(max_pixels)
    # The step server takes the flag as rendered.
    assert build_parser().parse_args(args).max_pixels == max_pixels
