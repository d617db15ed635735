"""Step discovery against the real API server (the session's control plane): a real `stepchain
step serve --discovery kubernetes` process on loopback, given the admin kubeconfig, watches its
pipeline's ConfigMaps; it sees a next step appear and go away, survives the API server being
killed and started again (a log line naming the broken watch, the watch re-established, no
crash) and sees a change made after the restart. A watch that expires (410 Gone) cannot be provoked on demand here;
tests/stepsvc/routing/test_discovery_kubernetes.py covers it on kmock's emulator.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import eventually
from control_plane import ControlPlane
from step_fixtures import ROOT, StepProcess, step_env, wait_serving

from stepsvc.ports import free_port

pytestmark = pytest.mark.slow

PIPELINE = "disco"
STEPS = [{"id": 0, "type": "identity", "next_step": [1, 2]},
         {"id": 1, "type": "identity"}, {"id": 2, "type": "identity"}]


def config_map(step_id: int) -> dict[str, object]:
    config = {"pipeline_id": PIPELINE, "step_id": step_id, "steps": STEPS}
    return {"metadata": {"name": f"{PIPELINE}-step-{step_id}-config",
                         "labels": {"app.kubernetes.io/part-of": "stepchain",
                                    "pipeline_id": PIPELINE, "step_id": str(step_id)}},
            "data": {"PIPELINE_CONFIG": json.dumps(config)}}


def active_steps(log: str) -> list[int] | None:
    """The last 'active steps [...]' the step logged."""
    found = re.findall(rf"configmap discovery {PIPELINE}: active steps \[([\d, ]*)\]", log)
    return [int(s) for s in found[-1].split(",") if s.strip()] if found else None


def test_a_real_step_follows_its_next_steps_configmaps_across_an_api_server_restart(
        kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_cluster.api())
    core.create_namespaced_config_map(kube_namespace, config_map(0))
    cfg = tmp_path / "step-0.json"
    cfg.write_text(json.dumps({"pipeline_id": PIPELINE, "step_id": 0, "steps": STEPS}))
    log = tmp_path / "step-0.log"
    port = free_port()
    env = step_env() | {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config", str(cfg),
             "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
             "--discovery", "kubernetes", "--namespace", kube_namespace],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    step = StepProcess(0, port, proc, log)
    try:
        wait_serving(step)
        eventually(lambda: active_steps(step.log_text()) == [0], what="step 0 active")
        core.create_namespaced_config_map(kube_namespace, config_map(1))
        eventually(lambda: active_steps(step.log_text()) == [0, 1], what="step 1 appears")
        core.delete_namespaced_config_map(f"{PIPELINE}-step-1-config", kube_namespace)
        eventually(lambda: active_steps(step.log_text()) == [0], what="step 1 goes away")

        kube_cluster.restart_apiserver(down_s=2.0)
        assert proc.poll() is None, step.log_text()
        # The broken watch is named in the log, then re-established: a step created after
        # the restart is seen.
        eventually(lambda: re.search(rf"configmap discovery {PIPELINE} in {kube_namespace}: "
                                     r".*resyncing", step.log_text()), timeout=30,
                   what="the broken watch logged")
        core = client.CoreV1Api(kube_cluster.api())
        core.create_namespaced_config_map(kube_namespace, config_map(2))
        eventually(lambda: active_steps(step.log_text()) == [0, 2], timeout=90,
                   what="step 2 seen after the restart")
        assert proc.poll() is None
        assert "Traceback" not in step.log_text()
    finally:
        step.stop()
