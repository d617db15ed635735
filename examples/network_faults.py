"""Steps on hosts of their own, and the faults of a real network between them.

Each step of a small pipeline runs in its own network namespace, joined to the others by a
bridge, with addresses (198.18.0.0/24) that exist only inside those namespaces; a client host
sends load while a fault is played, and the figures are printed per phase. Nothing of the
machine's own network is touched, and everything is removed at the end (also on Ctrl-C).

Needs root (network namespaces), iproute2 and nftables; the `latency` scenario also needs
Toxiproxy (`make tools`). Run from the repository, with the project's virtual environment:

    sudo .venv/bin/python examples/network_faults.py blackhole
    sudo .venv/bin/python examples/network_faults.py latency --keep

Scenarios: blackhole (the preferred next step's packets vanish), latency (50 ± 10 ms and 1 %
loss on every step-to-step link), freeze (a step SIGSTOPped mid-request), comeback (next steps
crash and come back on the same address). docs/step-server.md says what each shows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from topology.netns import scenarios, toxiproxy
from topology.netns.network import unavailable_reason

SCENARIOS = {
    "blackhole": scenarios.blackhole_preferred,
    "latency": scenarios.slow_lossy_links,
    "freeze": scenarios.frozen_step,
    "comeback": scenarios.step_comes_back,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (step logs, configs, answers)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"network_faults: cannot run here: {reason}", file=sys.stderr)
        return 2
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if "latency" in names and toxiproxy.missing_reason():
        print(f"network_faults: latency: {toxiproxy.missing_reason()}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="stepchain-netfaults-"))
    try:
        for name in names:
            result = SCENARIOS[name](workdir / name)
            print(result.report(), end="\n\n", flush=True)
    finally:
        if args.keep:
            print(f"step logs, configs and every answer: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
