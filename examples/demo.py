"""`make demo`: the whole local path, start to finish, in well under a minute.

1. starts `stepchain topology serve --backend local` on a free loopback port,
2. POSTs examples/pipeline.json (classify -> grayscale or deblur -> resize),
3. submits a real photograph (the astronaut photo shipped in topology/service/console/samples) and a
   blurred copy of it with `stepchain submit`: the sharp one goes to grayscale (preferred_next), the blurry one is
   routed to deblur (route "blurry") — each prints its per-step timing table,
4. draws the last request's trace as a waterfall (spans in out/demo/traces.jsonl; with
   OTEL_EXPORTER_OTLP_ENDPOINT set they go to that collector or Jaeger instead),
5. DELETEs the pipeline, stops the service and checks no step process is left.

Exits non-zero on any failure. Outputs land in out/demo/.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from stepsvc.ports import free_port
from topology.local.launch import installed_stepchain
from topology.local.supervisor import process_alive
from topology.service.auth import auth_header, client_token

ROOT = Path(__file__).resolve().parent.parent
#: The installed `stepchain` command (`make demo` installs it into .venv/bin).
STEPCHAIN = list(installed_stepchain())
OUT = ROOT / "out" / "demo"
PIPELINE = ROOT / "examples" / "pipeline.json"
#: Sample photographs shipped in the repository (public domain / CC0, see their README.md).
SAMPLES = ROOT / "topology" / "service" / "console" / "samples"
#: Written when examples/pipeline.json is missing (the same pipeline as in the repository).
DEMO_PIPELINE: dict[str, Any] = {
    "name": "demo",
    "steps": [
        {"step_id": 0, "type": "classify", "next_step": [1, 2], "preferred_next": 1,
         "route": {"blurry": 2}},
        {"step_id": 1, "type": "grayscale", "threads": 2, "next_step": 3},
        {"step_id": 2, "type": "deblur", "params": {"sigma": 1.5, "iterations": 10},
         "threads": 2, "next_step": 3},
        {"step_id": 3, "type": "resize", "params": {"scale": 0.5, "method": "bicubic"}},
    ],
}
START_TIMEOUT_S = 30.0
#: How long the demo keeps the console up on a terminal before tearing down by itself.
CONSOLE_WAIT_S = 300


class DemoFailed(RuntimeError):
    """A demo stage failed; the message says which and why."""


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Spans go to the user's collector/Jaeger when OTEL_EXPORTER_OTLP_ENDPOINT is set, else to a
    # local OTLP JSON file (steps and client append to it) that the demo draws as a waterfall.
    trace_file = None if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") else OUT / "traces.jsonl"
    if trace_file is not None:
        trace_file.unlink(missing_ok=True)
        env.update(STEPCHAIN_TRACE_FILE=str(trace_file), OTEL_BSP_SCHEDULE_DELAY="200")
    images = write_photographs()
    pipeline = ensure_pipeline()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = OUT / "topology.log"
    print(f"== starting the topology service (local backend) on {base}; log: "
          f"{log_path.relative_to(ROOT)}")
    with open(log_path, "wb") as log:
        service = subprocess.Popen(
            [*STEPCHAIN, "topology", "serve", "--backend", "local",
             "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(OUT / "state")],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    step_pids: list[int] = []
    try:
        with httpx.Client(base_url=base, timeout=60.0) as api:
            wait_healthy(api, service, log_path)
            # Writes need the token the service generated into its state dir at first start.
            api.headers.update(auth_header(client_token(OUT / "state")))
            print(f"== POST /pipeline  {pipeline.relative_to(ROOT)}")
            reply = api.post("/pipeline", json=json.loads(pipeline.read_text()))
            if reply.status_code not in (200, 201):
                raise DemoFailed(f"POST /pipeline answered {reply.status_code}: {reply.text}")
            created = reply.json()
            step_pids = [r["pid"] for r in created["resources"] if r.get("kind") == "Process"]
            entrypoint = created["entrypoint"]
            print(f"   pipeline {created['pipeline_id']}: {len(step_pids)} step processes, "
                  f"entrypoint {entrypoint}")
            for r in created["resources"]:
                if r.get("kind") == "Process":
                    print(f"   - {r['name']:<14} pid {r['pid']:<7} {r['address']}")
            for label, image in images.items():
                out = OUT / f"output{'' if label == 'sharp' else '-' + label}.png"
                print(f"\n== submit the {label} photograph {image.relative_to(ROOT)} -> "
                      f"{entrypoint}")
                printed = submit(image, entrypoint, out, env)
                print(f"   output image: {out.relative_to(ROOT)}")
            # ---- telemetry: trace file / waterfall --------------------------------------------
            show_trace(trace_file, printed, env)
            # -----------------------------------------------------------------------------------
            status = api.get(f"/pipeline/{created['pipeline_id']}").json()
            ready = sum(1 for s in status["steps"] if s["ready"])
            print(f"\n== GET /pipeline/{created['pipeline_id']}: {ready}/{len(status['steps'])} "
                  "steps ready")
            show_console(base, client_token(OUT / "state"), created["pipeline_id"])
            reply = api.delete(f"/pipeline/{created['pipeline_id']}")
            if reply.status_code != 200:
                raise DemoFailed(f"DELETE answered {reply.status_code}: {reply.text}")
            print(f"== DELETE /pipeline/{created['pipeline_id']}: {reply.json()}")
    except (DemoFailed, httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        stop(service)
        return 1
    code = stop(service)
    left = [pid for pid in step_pids if process_alive(pid)]
    if left:
        print(f"demo FAILED: step processes {left} are still running", file=sys.stderr)
        return 1
    if code != 0:  # SIGTERM: the service stops its steps, then exits 0
        print(f"demo FAILED: the topology service exited with {code}; see {log_path}",
              file=sys.stderr)
        return 1
    print("== topology service stopped; no step process left. Done.")
    return 0


def write_photographs() -> dict[str, Path]:
    """The astronaut photograph shipped in the repository (no download, no scikit-image), as
    PNG, and a blurred copy the classifier calls blurry."""
    from PIL import Image, ImageFilter

    with Image.open(SAMPLES / "astronaut.jpg") as shipped:
        photo = shipped.convert("RGB")
    sharp, blurry = OUT / "astronaut.png", OUT / "astronaut-blurry.png"
    photo.save(sharp)
    photo.filter(ImageFilter.GaussianBlur(4)).save(blurry)
    return {"sharp": sharp, "blurry": blurry}


def ensure_pipeline() -> Path:
    if not PIPELINE.exists():
        PIPELINE.write_text(json.dumps(DEMO_PIPELINE, indent=2) + "\n", encoding="utf-8")
        print(f"== wrote {PIPELINE.relative_to(ROOT)}")
    return PIPELINE


def wait_healthy(api: httpx.Client, service: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise DemoFailed(f"the topology service exited with {service.returncode}:\n"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if api.get("/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise DemoFailed(f"the topology service was not healthy within {START_TIMEOUT_S:.0f} s")


def submit(image: Path, entrypoint: str, out: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [*STEPCHAIN, "submit", str(image), "--target", entrypoint,
         "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    print("   " + result.stdout.rstrip().replace("\n", "\n   "))
    if result.returncode != 0:
        raise DemoFailed(f"stepchain submit exited with {result.returncode}: "
                         f"{result.stderr.strip()}")
    return result.stdout


def show_trace(trace_file: Path | None, submitted: str, env: dict[str, str]) -> None:
    """Draws the last request's trace with `stepchain trace show` (or says where it went)."""
    trace_id = re.search(r"^trace: ([0-9a-f]{32})$", submitted, re.MULTILINE)
    steps = re.search(r": (\d+) step\(s\)", submitted)
    if trace_id is None or steps is None:
        raise DemoFailed(f"stepchain submit printed no trace id:\n{submitted}")
    if trace_file is None:
        print(f"\n== trace {trace_id[1]} exported to {env['OTEL_EXPORTER_OTLP_ENDPOINT']}; "
              f"draw it with: stepchain trace show {trace_id[1]} --jaeger http://JAEGER:16686")
        return
    print(f"\n== trace of the last request: stepchain trace show {trace_id[1]} "
          f"--file {trace_file.relative_to(ROOT)}")
    width = shutil.get_terminal_size((120, 24)).columns - 3
    # trace show waits (--wait) until every step's batch of spans is in the file
    command = [*STEPCHAIN, "trace", "show", trace_id[1], "--file",
               str(trace_file), "--width", str(width), "--wait", "10"]
    shown = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    if shown.returncode != 0:
        raise DemoFailed(f"stepchain trace show failed: {shown.stderr.strip()}")
    print("   " + shown.stdout.rstrip().replace("\n", "\n   "))


def show_console(base: str, token: str | None, pipeline_id: str) -> None:
    """Says where the web console is; on a terminal, keeps it up until the user presses
    Enter (`make demo` from a script or CI goes straight on)."""
    url = f"{base}/" + (f"?token={token}" if token else "")
    print(f"\n== web console: {url}\n   pipeline {pipeline_id} drawn as a graph; Run a photo at "
          "1, 2, 4... threads; Live metrics and scaling advice; live terminal view: "
          f"stepchain top --topology {base}")
    if sys.stdin.isatty() and not os.environ.get("CI"):
        # Bounded, so a demo started from a terminal by a script still ends by itself.
        print(f"   open it now; press Enter to tear everything down (or wait "
              f"{CONSOLE_WAIT_S // 60} min) ", end="", flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], CONSOLE_WAIT_S)
        if ready:
            sys.stdin.readline()
        else:
            print()


def stop(service: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the service stops its steps in its shutdown), SIGKILL after 30 s."""
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
    try:
        return service.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.kill()
        return service.wait()


if __name__ == "__main__":
    sys.exit(main())
