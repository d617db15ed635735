"""The local backend's state directory: what it keeps on disk, so a later service picks it up.

One folder per pipeline::

    <state-dir>/<pipeline_id>/step-<N>.yaml     the step's PIPELINE_CONFIG
    <state-dir>/<pipeline_id>/discovery.json    {"0": "127.0.0.1:PORT", ...} (static discovery;
                                                a step with replicas lists every one's address)
    <state-dir>/<pipeline_id>/step-<N>.log      the step's stdout and stderr (step-<N>-<r>.log
                                                per replica when it has more than one)
    <state-dir>/<pipeline_id>/processes.json    pids and ports, so a later service can clean up
                                                orphans and start the steps on the same ports
    <state-dir>/<pipeline_id>/pipeline.json     the pipeline, so a restarted service brings it
                                                back (same id; same ports where they are free)
    <state-dir>/<pipeline_id>/spec.json         the pipeline JSON as submitted (GET's `spec`)

Every reader here forgives a missing or damaged file: it answers "nothing saved".
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from topology.local.launch import StepProcess
from topology.local.supervisor import process_alive, reap
from topology.pipeline.dump import pipeline_document
from topology.pipeline.graph import Pipeline, parse_pipeline

STATE_FILE = "processes.json"
PIPELINE_FILE = "pipeline.json"
SPEC_FILE = "spec.json"
DISCOVERY_FILE = "discovery.json"

#: (step id, replica) -> (gRPC port, metrics port, HTTP port)
Ports = dict[tuple[int, int], tuple[int, int, int]]


def save_pipeline(directory: Path, pipeline: Pipeline) -> None:
    """Keeps the pipeline (and the JSON as submitted, when known) to bring it back later."""
    (directory / PIPELINE_FILE).write_text(json.dumps(pipeline_document(pipeline)),
                                           encoding="utf-8")
    if pipeline.source is not None:  # what GET answers as `spec`, also after a restart
        (directory / SPEC_FILE).write_text(json.dumps(pipeline.source), encoding="utf-8")


def saved_pipelines(state_dir: Path) -> Iterator[Path]:
    """The folders of the pipelines a previous service kept, by id."""
    for saved in sorted(state_dir.glob(f"*/{PIPELINE_FILE}")):
        yield saved.parent


def load_pipeline(directory: Path) -> Pipeline:
    """The pipeline kept in `directory`, with the JSON as submitted when that was kept too.

    Raises OSError, ValueError or PipelineInvalid when it cannot be read back."""
    pipeline = parse_pipeline(json.loads((directory / PIPELINE_FILE).read_text(encoding="utf-8")))
    return replace(pipeline, source=_saved_spec(directory))


def write_processes(directory: Path, pipeline_id: str, procs: Iterable[StepProcess]) -> None:
    """Records the step processes' pids, config files and ports (processes.json)."""
    state = {"owner_pid": os.getpid(), "pipeline_id": pipeline_id,
             "steps": {(str(p.step_id) if p.replica == 0 else f"{p.step_id}/{p.replica}"):
                       {"pid": p.child.pid, "config": str(p.config_path),
                        "port": p.port, "metrics_port": p.metrics_port,
                        "http_port": p.http_port}
                       for p in procs}}
    (directory / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


def saved_ports(directory: Path) -> Ports:
    """(step id, replica) -> (port, metrics port, HTTP port) recorded by the previous
    service."""
    state = _read_json(directory / STATE_FILE)
    ports = {}
    for key, step in (state.get("steps") or {}).items():
        sid, _, replica = str(key).partition("/")
        if sid.isdigit() and (replica or "0").isdigit() and "port" in step:
            ports[(int(sid), int(replica or 0))] = (int(step["port"]),
                                                    int(step.get("metrics_port", 0)),
                                                    int(step.get("http_port", 0)))
    return ports


def reap_orphans(state_dir: Path, grace_s: float) -> list[int]:
    """Stops step processes a dead topology service left under the state dir; returns pids.

    A process is only touched if its command line still names the config file recorded for
    it (pids get reused) and the service that started it is gone. A folder with nothing to
    bring back is removed.
    """
    reaped: list[int] = []
    for state_file in state_dir.glob(f"*/{STATE_FILE}"):
        state = _read_json(state_file)
        if not state:
            continue
        owner = int(state.get("owner_pid", 0))
        if owner != os.getpid() and process_alive(owner):
            continue  # another running service owns these steps
        for step in (state.get("steps") or {}).values():
            pid, config = int(step.get("pid", 0)), str(step.get("config", ""))
            if reap(pid, config, grace_s):
                reaped.append(pid)
        if not (state_file.parent / PIPELINE_FILE).exists():  # nothing to bring back
            shutil.rmtree(state_file.parent, ignore_errors=True)
    return reaped


def _saved_spec(directory: Path) -> dict[str, Any] | None:
    """The pipeline JSON as submitted, saved by the previous service (None if it was not)."""
    return _read_json(directory / SPEC_FILE) or None


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
