"""The chart's RBAC is least privilege: exactly what the code calls, in one namespace.

The topology service's Role must grant exactly the (apiGroup, resource, verb) triples its
Kubernetes backend declares in `topology.kube.backend.REQUIRED_PERMISSIONS`; the step pods'
Role exactly what ConfigMap discovery calls (list + watch). Nothing cluster-wide is rendered.
"""

from __future__ import annotations

from typing import Any

import pytest
from helm_fixtures import NAMESPACE, VALUE_SETS, Rendering, render

from topology.kube.backend import REQUIRED_PERMISSIONS

Triple = tuple[str, str, str]

#: stepsvc/routing/kubernetes.py lists ConfigMaps, then watches them (nothing else).
STEP_DISCOVERY_PERMISSIONS: frozenset[Triple] = frozenset({
    ("", "configmaps", "list"),
    ("", "configmaps", "watch"),
})


def _triples(rules: list[dict[str, Any]]) -> set[Triple]:
    """Every (apiGroup, resource, verb) a list of PolicyRules grants."""
    granted = set()
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


def _role(rendering: Rendering, component: str) -> dict[str, Any]:
    return rendering.one("Role", component)


def _backend_permissions() -> set[Triple]:
    return {(group, resource, verb)
            for group, resource, verbs in REQUIRED_PERMISSIONS for verb in verbs}


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_topology_role_grants_exactly_what_the_kubernetes_backend_calls(value_set: str) -> None:
    required = _backend_permissions()
    granted = _triples(_role(render(value_set), "topology")["rules"])
    assert granted == required, (
        f"granted but never called: {sorted(granted - required)}; "
        f"called but not granted: {sorted(required - granted)}")


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_step_role_grants_only_configmap_discovery(value_set: str) -> None:
    granted = _triples(_role(render(value_set), "step")["rules"])
    assert granted == STEP_DISCOVERY_PERMISSIONS


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_nothing_cluster_wide_is_rendered(value_set: str) -> None:
    kinds = {m["kind"] for m in render(value_set).manifests}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace",
                        "CustomResourceDefinition", "PodSecurityPolicy",
                        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_each_role_is_bound_to_its_own_service_account_in_the_release_namespace(
        value_set: str) -> None:
    rendering = render(value_set)
    for component in ("topology", "step"):
        role = _role(rendering, component)
        binding = rendering.one("RoleBinding", component)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        account = rendering.one("ServiceAccount", component)["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": NAMESPACE}]
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    pod = rendering.one("Deployment", "topology")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == \
        rendering.one("ServiceAccount", "topology")["metadata"]["name"]


def test_rbac_create_false_renders_no_roles() -> None:
    rendering = render("defaults", "--set", "rbac.create=false")
    assert not rendering.of_kind("Role") and not rendering.of_kind("RoleBinding")


def test_roles_never_grant_secrets_wildcards_or_escalation() -> None:
    rendering = render("all-options")
    for role in rendering.of_kind("Role"):
        for group, resource, verb in _triples(role["rules"]):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert resource not in {"secrets", "roles", "rolebindings", "pods/exec"}, resource
            assert verb not in {"escalate", "bind", "impersonate"}, verb
