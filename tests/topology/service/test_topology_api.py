"""The topology HTTP API: every refused pipeline is a 422 naming the field; 404/409/413;
security (token, image and hostPath allow-lists, GPU bound)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from topology_fixtures import api_client

from stepsvc.cli import main as stepchain
from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.auth import auth_header, client_token
from topology.service.settings import Settings, settings_from

ROOT = Path(__file__).resolve().parents[3]
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())
TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    """Loopback service on the local backend; tests use dry_run so no process starts."""
    app = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    with api_client(app) as c:
        yield c


def dry_run(client: TestClient, body: Any) -> Any:
    return client.post("/pipeline", params={"dry_run": "true"}, json=body)


def refused_at(response: Any) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(d["msg"] for d in detail)
    return [d["loc"] for d in detail]


def steps(*items: Any) -> dict[str, Any]:
    return {"name": "p", "steps": list(items)}


REJECTIONS = [
    ("duplicate id", steps({"id": 1, "type": "blur"}, {"id": 1, "type": "edges"}),
     ["body", "steps", 1, "step_id"]),
    ("preferred_next not a successor", steps({"type": "blur", "next_step": [1],
                                              "preferred_next": 2},
                                             {"type": "edges", "next_step": 2},
                                             {"type": "edges"}),
     ["body", "steps", 0, "preferred_next"]),
    ("cycle", steps({"id": 0, "type": "blur", "next_step": 1},
                    {"id": 1, "type": "edges", "next_step": 2},
                    {"id": 2, "type": "sharpen", "next_step": 1}),
     ["body", "steps", 2, "next_step"]),
    ("self loop", steps({"type": "blur", "next_step": 0}), ["body", "steps", 0, "next_step"]),
    ("unknown type", steps({"type": "sepia"}), ["body", "steps", 0, "type"]),
    ("unknown type in a group", steps({"type": "blur"}, [{"type": "edges"}, {"type": "nope"}]),
     ["body", "steps", 1, 1, "type"]),
    ("bad params", steps({"type": "blur", "params": {"sigma": -2}}),
     ["body", "steps", 0, "params"]),
    ("unknown param", steps({"type": "edges", "params": {"sigma": 1}}),
     ["body", "steps", 0, "params"]),
    ("name not DNS-1123", {"name": "My_Pipeline", "steps": [{"type": "blur"}]}, ["body", "name"]),
    ("name too long", {"name": "p" * 41, "steps": [{"type": "blur"}]}, ["body", "name"]),
    ("empty pipeline", {"name": "p", "steps": []}, ["body", "steps"]),
    ("empty group", steps({"type": "blur"}, []), ["body", "steps", 1]),
    ("two entry steps", steps({"type": "blur", "next_step": []}, {"type": "edges"}),
     ["body", "steps"]),
    ("gpu above the field bound", steps({"type": "blur", "gpu": 1000}),
     ["body", "steps", 0, "gpu"]),
    ("bad replicas", steps({"type": "blur", "replicas": -1}), ["body", "steps", 0, "replicas"]),
    ("bad resources", steps({"type": "blur", "resources": {"limits": {"memory": "lots"}}}),
     ["body", "steps", 0, "resources", "limits"]),
    ("memory limit too small for a step", steps({"type": "blur", "resources": {
        "limits": {"memory": "32Mi"}}}), ["body", "steps", 0, "resources", "limits"]),
    ("unknown step field", steps({"type": "blur", "colour": "red"}),
     ["body", "steps", 0, "colour"]),
    ("namespace not DNS-1123", {"namespace": "Bad NS", "steps": [{"type": "blur"}]},
     ["body", "namespace"]),
    ("relative mountPath", steps({"type": "blur", "volumes": [
        {"name": "v", "mountPath": "data", "emptyDir": {}}]}),
     ["body", "steps", 0, "volumes", 0, "mountPath"]),
]


def volume(**fields: Any) -> dict[str, Any]:
    return steps({"type": "blur", "volumes": [{"name": "v", **fields}]})


VOLUME_REJECTIONS = [
    *[(f"emptyDir at {path}", volume(mountPath=path, emptyDir={}), "mountPath")
      for path in ("/", "/proc", "/sys/fs", "/dev", "/etc", "/etc/ssl", "/bin", "/sbin",
                   "/usr/local/bin", "/lib", "/lib64", "/libx32/x", "/var/run", "/var/run/secrets",
                   "/run", "/tmp")],
    *[(f"unnormalised {path}", volume(mountPath=path, emptyDir={}), "mountPath")
      for path in ("/data/", "//etc", "/data//x", "/data/./x", "/data/../etc")],
    ("unnormalised hostPath", volume(mountPath="/data", hostPath="/srv//images"), "hostPath"),
    *[(f"configMap {name}", volume(mountPath="/cfg", configMap=name), "configMap")
      for name in ("demo-step-0-config", "other-pipeline-step-12-config")],
]
REJECTIONS += [(name, body, ["body", "steps", 0, "volumes", 0, field])
               for name, body, field in VOLUME_REJECTIONS]


@pytest.mark.parametrize("body", [
    volume(mountPath="/data", emptyDir={}), volume(mountPath="/tmp/cache", emptyDir={}),
    volume(mountPath="/models/library", configMap="model-config"),
    volume(mountPath="/opt/run", configMap="demo-step-0-settings")])
def test_volumes_outside_system_paths_and_step_configs_are_accepted(
        client: TestClient, body: Any) -> None:
    assert dry_run(client, body).status_code == 200, body


def test_step_config_maps_of_the_renderer_are_the_names_volumes_may_not_mount() -> None:
    from topology.kube.names import config_map_name
    from topology.pipeline.model import STEP_CONFIG_MAP_RE

    assert STEP_CONFIG_MAP_RE.search(config_map_name("any-pipeline", 9999))


#: Links to no step of the pipeline: accepted with a warning naming the field, 422 when strict.
DANGLING = [
    ("dangling next_step", steps({"type": "blur", "next_step": [4]}),
     ["steps", 0, "next_step"]),
    ("dangling preferred_next", steps({"type": "blur", "next_step": [1], "preferred_next": 3},
                                      {"type": "edges"}),
     ["steps", 0, "preferred_next"]),
    ("dangling route", steps({"type": "classify", "route": {"blurry": 8}}, {"type": "edges"}),
     ["steps", 0, "route", "blurry"]),
]


@pytest.mark.parametrize(("body", "loc"), [(b, loc) for _, b, loc in DANGLING],
                         ids=[name for name, _, _ in DANGLING])
def test_link_to_no_step_is_accepted_with_a_warning_naming_the_field(
        client: TestClient, body: Any, loc: list[Any]) -> None:
    from topology.pipeline.model import format_loc

    response = dry_run(client, body)
    assert response.status_code == 200, response.text
    warnings = response.json()["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(format_loc(loc) + ": ")
    assert format_loc(loc) in response.headers["warning"]


@pytest.mark.parametrize(("body", "loc"), [(b, loc) for _, b, loc in DANGLING],
                         ids=[name for name, _, _ in DANGLING])
def test_link_to_no_step_is_a_422_with_strict_true(client: TestClient, body: Any,
                                                   loc: list[Any]) -> None:
    response = client.post("/pipeline", params={"dry_run": "true", "strict": "true"}, json=body)
    assert ["body", *loc] in refused_at(response)


@pytest.mark.parametrize(("body", "loc"), [(b, loc) for _, b, loc in REJECTIONS],
                         ids=[name for name, _, _ in REJECTIONS])
def test_refused_pipeline_is_a_422_naming_the_offending_field(client: TestClient, body: Any,
                                                              loc: list[Any]) -> None:
    assert loc in refused_at(dry_run(client, body))


def test_dry_run_returns_the_manifests_without_creating_anything(client: TestClient) -> None:
    response = dry_run(client, DEMO)
    assert response.status_code == 200
    kinds = [m["kind"] for m in response.json()["manifests"]]
    assert kinds.count("Deployment") == 4
    assert client.get("/pipelines").json() == {"pipelines": []}


def test_body_that_is_not_json_is_a_422(client: TestClient) -> None:
    response = client.post("/pipeline", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_malformed_json_is_answered_with_its_line_and_column_as_render_says_it(
        client: TestClient) -> None:
    body = b'{"steps": [\n  {"type": "blur"}\n  {"type": "grayscale"}\n]}'
    response = client.post("/pipeline", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body"] and (detail["line"], detail["column"]) == (3, 3)
    assert detail["msg"] == "not JSON: Expecting ',' delimiter: line 3 column 3 (char 33)"


def test_oversized_body_is_a_413_not_a_500(client: TestClient) -> None:
    big = {"name": "p", "steps": [{"type": "blur", "params": {}, "x": "y" * (2 << 20)}]}
    response = client.post("/pipeline", json=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_unknown_pipeline_is_a_404_on_get_put_and_delete(client: TestClient) -> None:
    assert client.get("/pipeline/nothing").status_code == 404
    assert client.delete("/pipeline/nothing").status_code == 404
    put = client.put("/pipeline/nothing", json={"steps": [{"type": "blur"}]})
    assert put.status_code == 404
    assert "nothing" in put.json()["detail"]


def test_put_with_a_different_name_in_the_body_is_refused(client: TestClient) -> None:
    response = client.put("/pipeline/demo", params={"dry_run": "true"}, json=DEMO | {"name": "x"})
    assert ["body", "name"] in refused_at(response)


def test_healthz_and_openapi_are_served(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "backend": "local"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/pipeline", "/pipelines", "/pipeline/{pipeline_id}", "/healthz"} <= set(paths)
    assert client.get("/docs").status_code == 200


# -- security ------------------------------------------------------------------------------


def secured(tmp_path: Path, **overrides: Any) -> TestClient:
    """A client that sends no token (the service has TOKEN unless overridden)."""
    settings = Settings(token=TOKEN, state_dir=tmp_path, **overrides)
    return TestClient(create_app(settings, LocalBackend(tmp_path)))


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"], ids=["loopback", "public"])
def test_unauthenticated_write_is_refused_on_loopback_too(tmp_path: Path, host: str) -> None:
    with secured(tmp_path, host=host) as client:
        for response in (dry_run(client, DEMO), client.delete("/pipeline/demo"),
                         client.put("/pipeline/demo", json=DEMO)):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["detail"]
        wrong = client.post("/pipeline", params={"dry_run": "true"}, json=DEMO,
                            headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        # Reads stay open.
        assert client.get("/pipelines").status_code == 200


def test_write_with_the_right_token_is_accepted(tmp_path: Path) -> None:
    with secured(tmp_path) as client:
        response = client.post("/pipeline", params={"dry_run": "true"}, json=DEMO,
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200


def test_first_start_generates_a_private_token_in_the_state_dir_and_reuses_it(
        tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    token_file = tmp_path / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and app.state.settings.token == token
    with TestClient(app) as client:
        assert dry_run(client, DEMO).status_code == 401
        ok = client.post("/pipeline", params={"dry_run": "true"}, json=DEMO,
                         headers=auth_header(client_token(tmp_path)))
        assert ok.status_code == 200
    again = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    assert again.state.settings.token == token  # clients keep working across restarts


def test_no_auth_opts_out_with_a_warning(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_from({"no_auth": True, "state_dir": str(tmp_path)}, {})
    with caplog.at_level("WARNING"), TestClient(create_app(settings,
                                                           LocalBackend(tmp_path))) as client:
        assert dry_run(client, DEMO).status_code == 200
    assert "--no-auth" in caplog.text
    assert not (tmp_path / "token").exists()


def test_service_refuses_no_auth_on_a_public_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--no-auth"):
        create_app(Settings(host="0.0.0.0", auth=False, state_dir=tmp_path),
                   LocalBackend(tmp_path))


def test_serve_command_exits_with_an_error_instead_of_listening_unprotected(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = stepchain(["topology", "serve", "--host", "0.0.0.0", "--no-auth",
                      "--state-dir", str(tmp_path)])
    assert code == 2
    assert "--no-auth" in capsys.readouterr().err


def test_a_relative_state_dir_becomes_absolute_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for flags, env in (({"state_dir": "here"}, {}), ({}, {"STEPCHAIN_STATE_DIR": "here"})):
        assert settings_from(flags, env).state_dir == (tmp_path / "here").resolve()
    backend = LocalBackend(Path("here"))
    try:
        assert backend.state_dir == (tmp_path / "here").resolve()
    finally:
        backend.close()


def test_token_comes_from_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_from({"host": "0.0.0.0"}, {"STEPCHAIN_TOKEN_FILE": str(token_file)})
    assert settings.token == TOKEN


def test_image_outside_the_allow_list_is_refused(client: TestClient) -> None:
    response = dry_run(client, DEMO | {"image": "docker.io/evil/miner:latest"})
    assert ["body", "image"] in refused_at(response)
    assert "allow" in response.json()["detail"][0]["msg"]


def test_image_allow_list_is_configurable(tmp_path: Path) -> None:
    settings = settings_from({"image_allowlist": "registry.local/*,ghcr.io/stepchain/*",
                              "state_dir": str(tmp_path)}, {})
    with api_client(create_app(settings, LocalBackend(tmp_path))) as client:
        assert dry_run(client, DEMO | {"image": "registry.local/step:2"}).status_code == 200


def hostpath_pipeline(path: str) -> dict[str, Any]:
    return steps({"type": "blur", "volumes": [
        {"name": "data", "mountPath": "/data", "hostPath": path}]})


def test_hostpath_is_refused_by_default(client: TestClient) -> None:
    response = dry_run(client, hostpath_pipeline("/srv/images"))
    assert ["body", "steps", 0, "volumes", 0, "hostPath"] in refused_at(response)


def test_hostpath_under_an_allowed_prefix_is_accepted_and_siblings_are_not(
        tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, hostpath_allowlist=("/srv/images",))
    with api_client(create_app(settings, LocalBackend(tmp_path))) as client:
        assert dry_run(client, hostpath_pipeline("/srv/images/cats")).status_code == 200
        refused = dry_run(client, hostpath_pipeline("/srv/images-private"))
        assert ["body", "steps", 0, "volumes", 0, "hostPath"] in refused_at(refused)
        sneaky = dry_run(client, hostpath_pipeline("/srv/images/../secrets"))
        assert ["body", "steps", 0, "volumes", 0, "hostPath"] in refused_at(sneaky)


def test_too_many_gpus_are_refused(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, max_gpus=2)
    with api_client(create_app(settings, LocalBackend(tmp_path))) as client:
        assert dry_run(client, steps({"type": "blur", "gpu": 2})).status_code == 200
        one_step = dry_run(client, steps({"type": "blur", "gpu": 3}))
        assert ["body", "steps", 0, "gpu"] in refused_at(one_step)
        replicas = dry_run(client, steps({"type": "blur", "gpu": True, "replicas": 3}))
        assert ["body", "steps", 0, "gpu"] in refused_at(replicas)


def test_pipeline_namespace_other_than_the_managed_one_is_refused_not_ignored(
        client: TestClient) -> None:
    other = client.post("/pipeline", json=DEMO | {"namespace": "kube-system"})
    assert refused_at(other) == [["body", "namespace"]]
    assert "'default'" in other.json()["detail"][0]["msg"]
    assert refused_at(dry_run(client, DEMO | {"namespace": "kube-system"})) == [
        ["body", "namespace"]]
    for body in (DEMO | {"namespace": "default"}, DEMO):
        accepted = dry_run(client, body)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["namespace"] == "default"
        assert {m["metadata"]["namespace"] for m in accepted.json()["manifests"]} == {"default"}


def test_post_without_json_content_type_says_to_send_it(client: TestClient) -> None:
    # What `curl -X POST URL -d @pipeline.json` (no -H) sends.
    response = client.post("/pipeline", content=json.dumps(DEMO).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "send Content-Type: application/json" in response.json()["detail"]
    bare = client.post("/pipeline", content=json.dumps(DEMO).encode())
    assert bare.status_code == 415
    assert "send Content-Type: application/json" in bare.json()["detail"]
