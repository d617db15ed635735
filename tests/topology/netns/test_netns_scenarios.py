"""The faults of a real network, played on steps that each run on a host of their own (network
namespaces): each scenario prints its figures (``pytest -s`` shows them) and asserts what a user
would see. Needs root; the latency scenario needs Toxiproxy and the cut-off one the real
Kubernetes control plane of the tests (both built by `make tools`).

The bounds are the documented ones (docs/step-server.md, "Network faults"), with room for a
shared 2-core machine where timings swing 2-3x.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from topology.netns import scenarios, toxiproxy
from topology.netns.network import NETNS_DIR, unavailable_reason

pytestmark = pytest.mark.slow

#: The dead-hop bound: keepalive finds a peer that stopped answering within 2 x --keepalive (1 s).
DEAD_HOP_S = 2.0
#: Scheduling room on a loaded machine on top of a bound.
SLACK_S = 1.0


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"these scenarios make network namespaces and need root: {reason}")


def _example(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """Runs examples/network_faults.py with `args`; its figures (``--json``), after checking it
    exited 0, printed them, and left no namespace of its own behind."""
    root = Path(__file__).resolve().parents[3]
    figures = tmp_path / "figures.json"
    child = subprocess.Popen([sys.executable, str(root / "examples" / "network_faults.py"),
                              *args, "--json", str(figures)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        out, err = child.communicate(timeout=240)
    finally:
        if child.poll() is None:  # ran past its bound: SIGINT cleans up as Ctrl-C does
            child.send_signal(signal.SIGINT)
            child.communicate(timeout=30)
    print("\n" + out)
    assert child.returncode == 0, err[-2000:]
    assert not [n for n in os.listdir(NETNS_DIR) if n.startswith(f"stepchain-{child.pid}-")]
    results: list[dict[str, Any]] = json.loads(figures.read_text(encoding="utf-8"))
    assert results and all(result["title"] in out for result in results)  # printed too
    return results


def test_a_blackholed_next_step_costs_at_most_the_keepalive_bound_and_comes_back_when_healed(
        tmp_path: Path) -> None:
    result = scenarios.blackhole_preferred(tmp_path, fault_s=4.0, heal_s=4.0)
    print("\n" + result.report())
    figures = result.figures
    assert figures["requests that failed"] == 0  # none reached its deadline: step 2 took them
    assert figures["longest wait of a request in flight during the blackhole (ms)"] < (
        DEAD_HOP_S + SLACK_S) * 1000
    blackholed = result.summaries[1]
    assert blackholed.ok > 0 and set(blackholed.served_by) <= {1, 2}
    assert blackholed.served_by.get(2, 0) > blackholed.served_by.get(1, 0)
    back = figures["step 1 used again after the heal (ms)"]
    assert back is not None and back < 3000


def test_slow_lossy_links_cost_their_latency_and_no_errors(tmp_path: Path) -> None:
    reason = toxiproxy.missing_reason()
    if reason:
        pytest.skip(reason)
    result = scenarios.slow_lossy_links(tmp_path, phase_s=5.0)
    print("\n" + result.report())
    figures = result.figures
    assert figures["requests that failed"] == 0
    assert all(summary.ok > 0 for summary in result.summaries)
    # A 6 MB frame pays the links' delays, not round trips waiting for HTTP/2 window updates:
    # with 64 KiB windows each hop would take ~95 round trips (over 9 s).
    added = figures["p50 added for 1920x1080 (ms)"]
    assert added < figures["latency the links add at least (ms)"] + 1500


@pytest.fixture
def api_server(request: pytest.FixtureRequest) -> tuple[Path, int, str]:
    """The session's real control plane (tests/cluster_fixtures.py): admin kubeconfig, the
    API server's loopback port, and a namespace of this test's own."""
    try:
        cluster = request.getfixturevalue("kube_cluster")
        namespace = request.getfixturevalue("kube_namespace")
    except pytest.FixtureLookupError:
        pytest.skip("needs the tests' real Kubernetes control plane (kube_cluster, "
                    "tests/cluster_fixtures.py), which is not in this checkout")
    return Path(cluster.kubeconfig), int(cluster.ports["apiserver"]), str(namespace)


def test_steps_cut_off_from_discovery_keep_serving_and_get_the_change_made_meanwhile(
        tmp_path: Path, api_server: tuple[Path, int, str]) -> None:
    kubeconfig, _, namespace = api_server
    (result,) = _example(tmp_path, "cutoff", "--kubeconfig", str(kubeconfig),
                         "--namespace", namespace)
    figures = result["figures"]
    assert figures["requests that failed"] == 0  # served with the discovery the steps had
    assert result["phases"][1]["ok"] > 0
    # The deletion reaches step 0 on the watch's next retransmission after the heal (0.6-6 s
    # after an 8 s cut, docs/step-server.md), not minutes later; step 1 gets nothing after.
    assert figures["the removal reached step 0, after the heal (ms)"] < 9000 + SLACK_S * 1000


def test_a_frozen_next_step_is_named_within_the_deadline_without_piling_up(
        tmp_path: Path) -> None:
    (result,) = _example(tmp_path, "freeze")  # played by the example a user runs
    figures = result["figures"]
    frozen, thawed = result["phases"][1], result["phases"][2]
    assert frozen["requests"] > 0
    assert figures["answers while frozen that name no step"] == 0
    assert figures["longest answer while frozen (ms)"] < 3000  # before the caller's deadline
    assert figures["step 0 threads peak"] <= figures["step 0 threads before"] + 8
    assert figures["step 0 RSS after (MiB)"] < figures["step 0 RSS before (MiB)"] + 40
    assert thawed["ok"] == thawed["requests"] > 0  # all well once thawed


def test_a_step_back_on_its_address_is_used_within_a_second_and_no_request_fails(
        tmp_path: Path) -> None:
    result = scenarios.step_comes_back(tmp_path)
    print("\n" + result.report())
    figures = result.figures
    assert figures["requests that failed"] == 0, figures["first failure"]
    for case in ("alone down", "both down"):
        back = figures[f"step 1 used again after it listened, {case} (ms)"]
        assert back is not None and back < 1000
