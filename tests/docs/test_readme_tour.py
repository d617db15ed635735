"""The README's five-minute tour, run as a newcomer runs it: its shell blocks, in order, in one
bash, from a directory that has the repository's files but is not the checkout.

Only what a shared test machine needs is changed, and said here: the service's port (8080 -> a
free one), the home directory (a fresh one, so the token is the tour's own), and the load test's
length and users (60 s of 20 users -> 4 s of 4). Every other line runs as printed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from step_fixtures import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TOUR_START, TOUR_END = "## A five-minute tour", "## Documentation"
#: What the tour's load test becomes here (a 60 s run does not belong in a test suite).
LOAD_TEST = ("--users 20 --duration 60", "--users 4 --duration 4")

pytestmark = pytest.mark.slow


def tour_blocks() -> list[str]:
    """The ```bash blocks of the README's tour, in order."""
    text = README.read_text(encoding="utf-8")
    tour = text[text.index(TOUR_START):text.index(TOUR_END)]
    return re.findall(r"```bash\n(.*?)```", tour, flags=re.DOTALL)


def stop_session(leader: int) -> None:
    """SIGTERM to the tour's shell and what it left running (the service stops its steps),
    SIGKILL after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(leader, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(leader, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_the_tour_has_its_five_stops() -> None:
    blocks = tour_blocks()
    assert len(blocks) >= 5
    assert "stepchain topology serve --port 8080 &" in blocks[0]
    assert any(LOAD_TEST[0] in block for block in blocks)


@pytest.mark.skipif(not (shutil.which("jq") and shutil.which("curl")), reason="needs jq and curl")
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "grpcurl").exists():
        pytest.skip("grpcurl comes with the test tools (make test)")
    work = tmp_path / "work"
    work.mkdir()
    for shipped in ("examples", "topology"):  # what the tour reads: the pipeline, the photos
        (work / shipped).symlink_to(ROOT / shipped)
    port = str(free_port())
    script = "\n".join(tour_blocks()).replace("8080", port).replace(*LOAD_TEST)
    script = ("set -euo pipefail\n" + script
              + f'\ncurl -sS -X DELETE localhost:{port}/pipeline/demo -H "$AUTH"\n'
              + "kill %1; wait %1 || true\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LOCUST_", "STEPCHAIN_", "XDG_")) and k != "PYTHONPATH"}
    env.update(HOME=str(tmp_path / "home"), PATH=f"{bin_dir}:{env.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    log = tmp_path / "tour.log"
    with log.open("w") as out:
        process = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        process.wait(timeout=300)
    finally:
        stop_session(process.pid)
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    # Each output is named by what it holds.
    for name, kind in (("out.png", "PNG"), ("out.jpg", "JPEG")):
        with Image.open(work / name) as image:
            assert image.format == kind, f"{name} holds a {image.format}"
    assert (work / "out" / "spike" / "loadtest.png").exists()
    assert "X-Step-0-Time" in output
