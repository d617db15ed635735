"""Steps on hosts of their own, and the faults of a real network between them.

Each step of a small pipeline runs in its own network namespace, joined to the others by a
bridge, with addresses (198.18.0.0/24) that exist only inside those namespaces; a client host
sends load while a fault is played, and the figures are printed per phase. Nothing of the
machine's own network is touched, and everything is removed at the end (also on Ctrl-C).

Needs root (network namespaces), iproute2 and nftables; the `latency` scenario also needs
Toxiproxy (`make tools`), the `cutoff` scenario socat and a Kubernetes API server listening on
this machine's loopback (`--kubeconfig`, an admin's). Run from the repository, with the
project's virtual environment:

    sudo .venv/bin/python examples/network_faults.py blackhole
    sudo .venv/bin/python examples/network_faults.py latency --keep
    sudo .venv/bin/python examples/network_faults.py cutoff --kubeconfig KUBECONFIG

Scenarios: blackhole (the preferred next step's packets vanish), latency (50 ± 10 ms and 1 %
loss on every step-to-step link), cutoff (the steps lose the API server they discover each
other through while a step is removed), freeze (a step SIGSTOPped mid-request), comeback (next
steps crash and come back on the same address); `all` plays each (cutoff only with
--kubeconfig). docs/step-server.md says what each shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from topology.netns import scenarios, toxiproxy
from topology.netns.network import unavailable_reason

SCENARIOS: dict[str, Callable[..., scenarios.ScenarioResult]] = {
    "blackhole": scenarios.blackhole_preferred,
    "latency": scenarios.slow_lossy_links,
    "cutoff": scenarios.topology_cut_off,
    "freeze": scenarios.frozen_step,
    "comeback": scenarios.step_comes_back,
}


def loopback_port(kubeconfig: Path) -> int:
    """The port of the API server `kubeconfig` names, which must listen on this machine's
    loopback (the scenario relays it into the network); ValueError saying why not."""
    import yaml

    document = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
    server = document["clusters"][0]["cluster"]["server"]
    url = urllib.parse.urlsplit(server)
    if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise ValueError(f"{kubeconfig}: the API server must listen on this machine's "
                         f"loopback with an explicit port (https://127.0.0.1:PORT), not {server}")
    return url.port


@contextlib.contextmanager
def scenario_namespace(kubeconfig: Path, given: str | None) -> Iterator[str]:
    """`given`, else a Kubernetes namespace made for the scenario and deleted after it."""
    if given:
        yield given
        return
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    name = f"stepchain-netfaults-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (step logs, configs, answers)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write each scenario's phases and figures to FILE (a list)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="cutoff: an admin kubeconfig of an API server on 127.0.0.1")
    parser.add_argument("--namespace",
                        help="cutoff: an existing namespace for the pipeline's ConfigMaps "
                             "(default: one made for the scenario and deleted after it)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"network_faults: cannot run here: {reason}", file=sys.stderr)
        return 2
    if args.scenario == "all":
        names = [n for n in SCENARIOS if n != "cutoff" or args.kubeconfig]
    else:
        names = [args.scenario]
    if "latency" in names and toxiproxy.missing_reason():
        print(f"network_faults: latency: {toxiproxy.missing_reason()}", file=sys.stderr)
        return 2
    api_port = 0
    if "cutoff" in names:
        if args.kubeconfig is None:
            print("network_faults: cutoff needs --kubeconfig (an API server on 127.0.0.1)",
                  file=sys.stderr)
            return 2
        try:
            api_port = loopback_port(args.kubeconfig)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            print(f"network_faults: cutoff: {exc}", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="stepchain-netfaults-"))
    results = []
    try:
        for name in names:
            if name == "cutoff":
                with scenario_namespace(args.kubeconfig, args.namespace) as namespace:
                    result = scenarios.topology_cut_off(
                        workdir / name, kubeconfig=args.kubeconfig, api_port=api_port,
                        namespace=namespace)
            else:
                result = SCENARIOS[name](workdir / name)
            print(result.report(), end="\n\n", flush=True)
            results.append(result.as_dict())
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    finally:
        if args.keep:
            print(f"step logs, configs and every answer: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
