"""The network faults a step meets on a cluster, each played on a hosted pipeline under load and
reduced to figures: what the tests assert on and ``examples/network_faults.py`` prints.

1. :func:`blackhole_preferred` — the preferred next step's packets vanish (no reset).
2. :func:`slow_lossy_links` — every step-to-step link gets latency ± jitter (Toxiproxy) and
   random loss (nftables), beside the clean network.
3. :func:`topology_cut_off` — the steps lose the Kubernetes API server they discover each
   other through (a real one, reached over the network), and a step is removed meanwhile.
4. :func:`frozen_step` — a step stops (SIGSTOP) with requests inside it.
5. :func:`step_comes_back` — next steps crash and come back on the same address.

Each returns a :class:`ScenarioResult`: one line per phase (requests that *started* in it),
named figures, and the load average it ran under (timings on a shared machine swing with it).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topology.kube.manifests import render_manifests
from topology.kube.names import config_map_name
from topology.kube.objects import RenderOptions
from topology.netns.drive import Drive
from topology.netns.figures import Record, Summary, first_served_by, summarize, table
from topology.netns.hosted import API_SERVER_NAME, HostedPipeline, KubeDiscovery
from topology.netns.network import Host, Network
from topology.netns.toxiproxy import Toxiproxy

#: Step 0 forwards to step 1 (preferred) or step 2: the alternative stays healthy.
ALTERNATIVES: dict[str, Any] = {"name": "alternatives", "steps": [
    {"id": 0, "type": "identity", "next_step": [1, 2], "preferred_next": 1},
    {"id": 1, "type": "identity", "next_step": []},
    {"id": 2, "type": "identity", "next_step": []}]}
#: Three steps in a row: every request crosses two step-to-step links.
CHAIN: dict[str, Any] = {"name": "chain", "steps": [
    {"id": 0, "type": "identity", "next_step": [1]},
    {"id": 1, "type": "identity", "next_step": [2]},
    {"id": 2, "type": "identity", "next_step": []}]}
#: Step 0 has one next step, which does some work (requests are inside it when it freezes).
PAIR: dict[str, Any] = {"name": "pair", "steps": [
    {"id": 0, "type": "identity", "next_step": [1]},
    {"id": 1, "type": "gaussian_blur", "params": {"sigma": 2.0}, "next_step": []}]}


@dataclass
class ScenarioResult:
    """What one scenario saw: phases, named figures, and every answer."""

    title: str
    summaries: list[Summary]
    figures: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def as_dict(self) -> dict[str, Any]:
        """The title, every phase, the figures and the load, as plain JSON values (what
        ``examples/network_faults.py --json`` writes); NaN percentiles are None."""
        def plain(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        return {"title": self.title,
                "phases": [{"phase": s.phase, "seconds": round(s.seconds, 3),
                            "requests": s.count, "ok": s.ok, "ok_per_s": plain(s.ok_per_s),
                            "p50_ms": plain(s.p50_ms), "p99_ms": plain(s.p99_ms),
                            "max_ms": plain(s.max_ms), "errors": dict(s.errors),
                            "served_by": {str(k): v for k, v in s.served_by.items()}}
                           for s in self.summaries],
                "figures": {name: plain(value) for name, value in self.figures.items()},
                "load": list(self.load)}

    def report(self) -> str:
        lines = [table(self.summaries, title=self.title)]
        lines += [f"  {name}: {_shown(value)}" for name, value in self.figures.items()]
        lines.append("  load average (1/5/15 min): " + " / ".join(f"{v:.1f}" for v in self.load))
        return "\n".join(lines)


@contextlib.contextmanager
def hosted_pipeline(pipeline: Mapping[str, Any], workdir: Path, *,
                    step_args: tuple[str, ...] = ()
                    ) -> Iterator[tuple[Network, HostedPipeline, Host]]:
    """A network with `pipeline`'s steps started on hosts of their own and a client host;
    everything is stopped and deleted when the block ends, however it ends."""
    with Network() as network:
        hosted = HostedPipeline(network, pipeline, workdir, step_args=step_args)
        try:
            client = network.add_host("client")
            hosted.start()
            yield network, hosted, client
        finally:
            hosted.close()


def _in_flight(records: list[Record], start: float, end: float) -> list[Record]:
    """Requests that were waiting at some moment of [start, end)."""
    return [r for r in records if r.start < end and r.end > start]


def _ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for a figure named "... (ms)"; None: it never happened."""
    return None if seconds is None else round(seconds * 1000, 1)


def _shown(value: Any) -> str:
    if value is None:
        return "never"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def blackhole_preferred(workdir: Path, *, fault_s: float = 6.0, heal_s: float = 6.0,
                        concurrency: int = 4, deadline: float = 5.0,
                        size: str = "64x64") -> ScenarioResult:
    """Scenario 1: the preferred next step is blackholed under load, then healed."""
    with hosted_pipeline(ALTERNATIVES, workdir) as (network, hosted, client):
        drive = Drive.start(network, client, hosted.entry.address, workdir / "load.jsonl",
                            concurrency=concurrency, duration=3600, deadline=deadline,
                            size=size)
        drive.wait_for(20)
        network.blackhole(hosted.step(1).host)
        t_fault = time.monotonic()  # phases start once the rule is in place
        time.sleep(fault_s)
        network.heal(hosted.step(1).host)
        t_heal = time.monotonic()
        time.sleep(heal_s)
        records = drive.stop()
    waited = _in_flight(records, t_fault, t_heal)
    # requests sent after the heal: ones stuck on step 1 during the blackhole do not count
    back = first_served_by([r for r in records if r.start >= t_heal], 1, after=t_heal)
    return ScenarioResult(
        title=f"1. blackhole the preferred next step (step 1) for {fault_s:.0f} s; "
              f"{concurrency} callers, {size} frames, deadline {deadline:.0f} s",
        summaries=[summarize("before", records, drive.started, t_fault),
                   summarize("step 1 blackholed", records, t_fault, t_heal),
                   summarize("healed", records, t_heal, t_heal + heal_s)],
        figures={"longest wait of a request in flight during the blackhole (ms)":
                 _ms(max((r.ms for r in waited), default=0) / 1000),
                 "requests that failed": sum(r.code != "OK" for r in records),
                 "step 1 used again after the heal (ms)": _ms(None if back is None
                                                         else back.end - t_heal)},
        records=records)


def slow_lossy_links(workdir: Path, *, phase_s: float = 8.0, latency_ms: int = 50,
                     jitter_ms: int = 10, loss_percent: float = 1.0, concurrency: int = 2,
                     sizes: tuple[str, ...] = ("64x64", "1920x1080"),
                     deadline: float = 30.0) -> ScenarioResult:
    """Scenario 2: every step-to-step link through a Toxiproxy of the sending host; one phase
    per frame size on the clean links, then the same with `latency_ms` ± `jitter_ms` each way
    and `loss_percent` random loss between every pair of steps."""
    summaries = []
    records: list[Record] = []
    with hosted_pipeline(CHAIN, workdir) as (network, hosted, client):
        proxies: list[tuple[Toxiproxy, str]] = []
        for sender, receiver in ((0, 1), (1, 2)):
            proxy = Toxiproxy(network, hosted.step(sender).host,
                              workdir / f"toxiproxy-{sender}.log")
            name = f"step_{sender}_to_{receiver}"
            hosted.route(sender, receiver,
                         proxy.proxy(name, 20000 + receiver, hosted.step(receiver).address))
            proxies.append((proxy, name))
        time.sleep(0.5)  # discovery reloads its file within 0.2 s

        def phase(label: str) -> None:
            for size in sizes:
                drive = Drive.start(network, client, hosted.entry.address,
                                    workdir / f"load-{label}-{size}.jsonl",
                                    concurrency=concurrency, duration=3600,
                                    deadline=deadline, size=size)
                drive.wait_for(2, timeout=60)  # connections up, first frames through
                start = time.monotonic()
                time.sleep(phase_s)
                done = drive.stop()
                records.extend(done)
                summaries.append(summarize(f"{label} {size}", done, start, start + phase_s))

        phase("clean")
        for proxy, name in proxies:
            proxy.latency(name, latency_ms, jitter_ms, stream="upstream")
            proxy.latency(name, latency_ms, jitter_ms, stream="downstream")
        network.loss([s.host for s in hosted.steps.values()], loss_percent)
        slow = f"{latency_ms}±{jitter_ms}ms {loss_percent:g}%"
        phase(slow)
    by_phase = {summary.phase: summary for summary in summaries}
    return ScenarioResult(
        title=f"2. step-to-step links with {latency_ms} ± {jitter_ms} ms each way (Toxiproxy) "
              f"and {loss_percent:g} % loss (nftables) beside the clean links; chain of 3 steps, "
              f"{concurrency} callers",
        summaries=summaries,
        figures={"requests that failed": sum(r.code != "OK" for r in records),
                 # each request crosses 2 links, each twice (request, answer): 4 one-way delays
                 "latency the links add at least (ms)": 4.0 * (latency_ms - jitter_ms),
                 **{f"p50 added for {size} (ms)": round(
                     by_phase[f"{slow} {size}"].p50_ms - by_phase[f"clean {size}"].p50_ms, 1)
                    for size in sizes}},
        records=records)


def topology_cut_off(workdir: Path, *, kubeconfig: Path, api_port: int, namespace: str,
                     cut_s: float = 8.0, after_s: float = 12.0, concurrency: int = 4,
                     deadline: float = 5.0, size: str = "64x64") -> ScenarioResult:
    """Scenario 3: the steps discover each other through the API server at 127.0.0.1:`api_port`
    (admin `kubeconfig`), relayed into a control host; the control host is cut off from every
    step, the preferred next step's ConfigMap is deleted meanwhile (as a topology service
    removing it would), then the link heals."""
    import yaml
    from kubernetes import client, config

    pipeline = {**ALTERNATIVES, "name": "cutoff"}
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    with Network() as network:
        control = network.add_host("control")
        network.expose(control, 6443, api_port)
        steps_config = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
        for cluster in steps_config["clusters"]:  # the same server, by its name in the network
            scheme = cluster["cluster"]["server"].partition("://")[0]
            cluster["cluster"]["server"] = f"{scheme}://{API_SERVER_NAME}:6443"
        steps_kubeconfig = workdir / "kubeconfig-steps"
        workdir.mkdir(parents=True, exist_ok=True)
        steps_kubeconfig.write_text(yaml.safe_dump(steps_config), encoding="utf-8")
        hosted = HostedPipeline(network, pipeline, workdir,
                                kube=KubeDiscovery(steps_kubeconfig, namespace, control))
        try:
            for manifest in render_manifests(hosted.pipeline, RenderOptions(namespace=namespace)):
                body: Any = manifest  # the client takes the plain dict a manifest is
                if manifest["kind"] == "ConfigMap":  # what the steps' discovery watches
                    api.create_namespaced_config_map(namespace, body)
            client_host = network.add_host("client")
            hosted.start()
            drive = Drive.start(network, client_host, hosted.entry.address,
                                workdir / "load.jsonl", concurrency=concurrency,
                                duration=3600, deadline=deadline, size=size)
            drive.wait_for(20)
            steps = [s.host for s in hosted.steps.values()]
            network.partition([control], steps)
            t_cut = time.monotonic()
            time.sleep(1.0)
            api.delete_namespaced_config_map(config_map_name(hosted.pipeline.pipeline_id, 1),
                                             namespace)
            time.sleep(cut_s - 1.0)
            network.heal(control)
            t_heal = time.monotonic()
            time.sleep(after_s)
            records = drive.stop()
        finally:
            hosted.close()
    through_1 = [r.start for r in records if r.code == "OK" and 1 in r.steps]
    last_to_1 = max((t for t in through_1 if t >= t_heal), default=None)
    return ScenarioResult(
        title=f"3. the steps cut off from the API server they discover each other through for "
              f"{cut_s:.0f} s; step 1 (preferred) removed meanwhile; {concurrency} callers, "
              f"{size} frames, deadline {deadline:.0f} s",
        summaries=[summarize("before", records, drive.started, t_cut),
                   summarize("cut off, step 1 removed", records, t_cut, t_heal),
                   summarize("healed", records, t_heal, t_heal + after_s)],
        figures={"requests that failed": sum(r.code != "OK" for r in records),
                 "the removal reached step 0, after the heal (ms)":
                     _ms(0.0 if last_to_1 is None else last_to_1 - t_heal),
                 "requests step 1 served after the heal": sum(t >= t_heal for t in through_1)},
        records=records)


def frozen_step(workdir: Path, *, freeze_s: float = 8.0, concurrency: int = 4,
                deadline: float = 3.0, size: str = "256x256") -> ScenarioResult:
    """Scenario 4: the only next step is frozen (SIGSTOP) with requests in it, then thawed;
    step 0's threads and memory are sampled before, during and after."""
    with hosted_pipeline(PAIR, workdir) as (network, hosted, client):
        drive = Drive.start(network, client, hosted.entry.address, workdir / "load.jsonl",
                            concurrency=concurrency, duration=3600, deadline=deadline,
                            size=size)
        drive.wait_for(20)
        before = hosted.usage(0)
        hosted.freeze(1)
        t_freeze = time.monotonic()
        peak_threads, peak_rss = before
        while time.monotonic() < t_freeze + freeze_s:
            threads, rss = hosted.usage(0)
            peak_threads, peak_rss = max(peak_threads, threads), max(peak_rss, rss)
            time.sleep(0.2)
        hosted.thaw(1)
        t_thaw = time.monotonic()
        time.sleep(4.0)
        after = hosted.usage(0)
        records = drive.stop()
    frozen = [r for r in records if t_freeze <= r.start < t_thaw]
    unnamed = [r for r in frozen if r.code != "OK" and "step " not in r.message]
    return ScenarioResult(
        title=f"4. step 1 frozen (SIGSTOP) for {freeze_s:.0f} s mid-request; step 0 has no "
              f"other next step; {concurrency} callers, {size} frames, deadline {deadline:.0f} s",
        summaries=[summarize("before", records, drive.started, t_freeze),
                   summarize("step 1 frozen", records, t_freeze, t_thaw),
                   summarize("thawed", records, t_thaw, t_thaw + 4.0)],
        figures={"longest answer while frozen (ms)": _ms(max((r.ms for r in frozen), default=0)
                                                    / 1000),
                 "answers while frozen that name no step": len(unnamed),
                 "one answer while frozen": next((f"{r.code}: {r.message}" for r in frozen
                                                  if r.code != "OK"), "-"),
                 "step 0 threads before": before[0], "step 0 threads peak": peak_threads,
                 "step 0 threads after": after[0],
                 "step 0 RSS before (MiB)": round(before[1], 1),
                 "step 0 RSS peak (MiB)": round(peak_rss, 1),
                 "step 0 RSS after (MiB)": round(after[1], 1)},
        records=records)


def step_comes_back(workdir: Path, *, concurrency: int = 4, deadline: float = 10.0,
                    down_s: float = 1.0, size: str = "64x64") -> ScenarioResult:
    """Scenario 5: the preferred next step crashes and comes back on the same address; then
    both next steps crash and come back `down_s` later, within the requests' deadline."""
    with hosted_pipeline(ALTERNATIVES, workdir) as (network, hosted, client):
        drive = Drive.start(network, client, hosted.entry.address, workdir / "load.jsonl",
                            concurrency=concurrency, duration=3600, deadline=deadline,
                            size=size)
        drive.wait_for(20)
        t_one = time.monotonic()
        hosted.kill(1)
        time.sleep(down_s)
        ready_one = hosted.restart(1)
        time.sleep(3.0)
        t_both = time.monotonic()
        hosted.kill(1)
        hosted.kill(2)
        time.sleep(down_s)
        hosted.restart(2)
        ready_both = hosted.restart(1)
        time.sleep(3.0)
        t_end = time.monotonic()
        records = drive.stop()
    back_one = first_served_by(records, 1, after=ready_one)
    back_both = first_served_by(records, 1, after=ready_both)
    return ScenarioResult(
        title=f"5. next steps crash (SIGKILL) and come back on the same address {down_s:.0f} s "
              f"later; {concurrency} callers, {size} frames, deadline {deadline:.0f} s",
        summaries=[summarize("before", records, drive.started, t_one),
                   summarize("step 1 down and back", records, t_one, t_both),
                   summarize("steps 1 and 2 down and back", records, t_both, t_end)],
        figures={"requests that failed": sum(r.code != "OK" for r in records),
                 "first failure": next((f"{r.code}: {r.message}" for r in records
                                        if r.code != "OK"), "-"),
                 "step 1 used again after it listened, alone down (ms)":
                     _ms(None if back_one is None else back_one.end - ready_one),
                 "step 1 used again after it listened, both down (ms)":
                     _ms(None if back_both is None else back_both.end - ready_both),
                 "longest answer (ms)": _ms(max((r.ms for r in records), default=0) / 1000)},
        records=records)
