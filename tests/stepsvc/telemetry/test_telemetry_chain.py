"""Tracing and metrics across real step processes exporting real OTLP to a loopback receiver.

Three ``stepchain step serve`` processes (blur → resize 0.5 → grayscale) run with only the
standard ``OTEL_*`` variables pointing at an OTLP/gRPC receiver built on opentelemetry-proto's
collector TraceService, plus ``STEPCHAIN_TRACE_FILE`` for the local JSON file. The test client
starts its own root span with an in-process tracer exporting to the same receiver.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image as PILImage
from step_fixtures import ROOT, noisy_image, raw_request, step_env
from stepchain.v1 import step_pb2, step_pb2_grpc
from telemetry_fixtures import (
    OtlpReceiver,
    ReceivedSpan,
    TracedChain,
    otlp_env,
    sample,
    scrape,
)

from stepsvc.telemetry import Tracing, current_trace_id

#: Slow (over ~5 s each): every test shares a chain of real step processes exporting OTLP.
pytestmark = pytest.mark.slow

STEPS = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 1.0}, "next_step": 1},
         {"id": 1, "type": "resize", "params": {"scale": 0.5}, "next_step": 2},
         {"id": 2, "type": "grayscale"}]
TYPES = {0: "gaussian_blur", 1: "resize", 2: "grayscale"}
#: Step 2 refuses more pixels than this: a 96x128 input reaches it as 48x64 and fails there.
STEP2_MAX_PIXELS = 1000
METHOD = "stepchain.v1.StepService/Process"
CLIENT_SERVICE = "telemetry-test-client"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver()
    yield rx
    rx.stop()


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces") / "spans.jsonl"


@pytest.fixture(scope="module")
def chain(receiver: OtlpReceiver, trace_file: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedChain]:
    env = {**otlp_env(receiver), "STEPCHAIN_TRACE_FILE": str(trace_file)}
    procs = TracedChain(tmp_path_factory.mktemp("chain"), STEPS, env,
                        extra_args={2: ["--max-pixels", str(STEP2_MAX_PIXELS)]})
    yield procs
    procs.stop()


@pytest.fixture(scope="module")
def client(receiver: OtlpReceiver) -> Iterator[Tracing]:
    tracing = Tracing.from_env(CLIENT_SERVICE, env=otlp_env(receiver))
    yield tracing
    tracing.shutdown()


@pytest.fixture(scope="module")
def stub(chain: TracedChain, client: Tracing) -> Iterator[step_pb2_grpc.StepServiceStub]:
    channel = client.intercept_channel(grpc.insecure_channel(chain.address(0)))
    yield step_pb2_grpc.StepServiceStub(channel)
    channel.close()


def traced_call(client: Tracing, stub: step_pb2_grpc.StepServiceStub,
                request: step_pb2.ProcessRequest
                ) -> tuple[str, step_pb2.ProcessResponse | None, grpc.RpcError | None]:
    """Sends `request` under a root span; returns (trace id, response, error)."""
    response, error = None, None
    try:
        with client.span("test request"):
            trace_id = current_trace_id()
            response = stub.Process(request, timeout=30)
    except grpc.RpcError as err:
        error = err
    client.force_flush()
    return trace_id, response, error


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, [f"{s.service}:{s.name}" for s in spans]
    return spans[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: s.start_ns)


def assert_inside(child: ReceivedSpan, parent: ReceivedSpan) -> None:
    assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns, (
        f"{child.service}:{child.name} [{child.start_ns}, {child.end_ns}] not inside "
        f"{parent.service}:{parent.name} [{parent.start_ns}, {parent.end_ns}]")


def test_one_request_through_three_step_processes_is_one_trace_of_nested_step_spans(
        receiver: OtlpReceiver, chain: TracedChain, client: Tracing,
        stub: step_pb2_grpc.StepServiceStub) -> None:
    img = noisy_image(48, 64)
    trace_id, response, error = traced_call(client, stub, raw_request(img))
    assert error is None and response is not None
    assert response.trace_id == trace_id  # each step returns the trace id

    # root, client call, 3 steps x (server, queue, decode, kernel) + 2 x (forward, client) + encode
    spans = receiver.wait_for(trace_id, 19)
    assert len(spans) == 19
    servers = [s for s in receiver.spans() if s.kind == "SPAN_KIND_SERVER"
               and s.attributes.get("stepchain.request_id") == response.request_id]
    assert len(servers) == 3 and {s.trace_id for s in servers} == {trace_id}  # one trace

    root = only([s for s in spans if s.parent_id is None])
    assert (root.name, root.service) == ("test request", CLIENT_SERVICE)
    caller = only(children(spans, root))
    assert (caller.name, caller.kind, caller.service) == (METHOD, "SPAN_KIND_CLIENT",
                                                          CLIENT_SERVICE)
    assert_inside(caller, root)
    pixels = {0: 48 * 64, 1: 48 * 64, 2: 24 * 32}
    for step_id in range(3):
        server = only(children(spans, caller))
        assert (server.name, server.kind, server.service) == (
            METHOD, "SPAN_KIND_SERVER", f"tel-step-{step_id}")
        assert_inside(server, caller)
        timing = response.timings[step_id]
        attrs = server.attributes
        assert attrs["stepchain.pipeline_id"] == "tel"
        assert attrs["stepchain.step_id"] == step_id
        assert attrs["stepchain.step_type"] == TYPES[step_id]
        assert attrs["stepchain.threads"] == timing.threads >= 1
        assert attrs["stepchain.pixels"] == pixels[step_id]
        assert attrs["stepchain.megapixels_per_second"] == pytest.approx(
            pixels[step_id] / 1e6 / (timing.kernel_ms / 1000.0), rel=1e-3)
        assert attrs["stepchain.request_id"] == response.request_id
        assert (attrs["rpc.system"], attrs["rpc.service"], attrs["rpc.method"],
                attrs["rpc.grpc.status_code"]) == ("grpc", "stepchain.v1.StepService",
                                                   "Process", 0)
        phases = children(spans, server)
        last = step_id == 2
        assert [p.name for p in phases] == (["queue", "decode", "kernel", "encode"] if last
                                            else ["queue", "decode", "kernel", "forward"])
        for phase in phases:
            assert_inside(phase, server)
            assert phase.service == server.service
        assert all(s.status == "STATUS_CODE_UNSET" for s in [server, *phases])
        if last:
            break
        assert attrs["stepchain.next_step"] == step_id + 1
        forward = phases[-1]
        caller = only(children(spans, forward))  # the forward's client span parents the next
        assert (caller.name, caller.kind, caller.service) == (
            METHOD, "SPAN_KIND_CLIENT", f"tel-step-{step_id}")
        assert_inside(caller, forward)


def test_a_step_failing_downstream_marks_every_span_on_the_path_error_with_its_message(
        receiver: OtlpReceiver, chain: TracedChain, client: Tracing,
        stub: step_pb2_grpc.StepServiceStub) -> None:
    trace_id, response, error = traced_call(client, stub, raw_request(noisy_image(96, 128)))
    assert response is None and error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # root, client call, steps 0 and 1 complete phases + forward/client, step 2 server/queue/decode
    spans = receiver.wait_for(trace_id, 17)
    servers = sorted((s for s in spans if s.kind == "SPAN_KIND_SERVER"),
                     key=lambda s: s.attributes["stepchain.step_id"])
    assert [s.attributes["stepchain.step_id"] for s in servers] == [0, 1, 2]
    for server in servers:
        assert server.status == "STATUS_CODE_ERROR"
        assert server.status_message.startswith("RESOURCE_EXHAUSTED: ")
        assert "at most 1000 pixels" in server.status_message
        if server is not servers[2]:  # upstream steps name the step that failed
            assert server.status_message.startswith("RESOURCE_EXHAUSTED: step 2 (grayscale)")
        assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    failed_phase = only([s for s in children(spans, servers[2]) if s.name == "decode"])
    assert failed_phase.status == "STATUS_CODE_ERROR" and "exception" in failed_phase.events
    assert "at most 1000 pixels" in failed_phase.status_message
    for server in servers[:2]:
        phases = {p.name: p for p in children(spans, server)}
        assert phases["kernel"].status == "STATUS_CODE_UNSET"  # the work that succeeded
        assert phases["forward"].status == "STATUS_CODE_ERROR"
        attempt = only(children(spans, phases["forward"]))
        assert attempt.kind == "SPAN_KIND_CLIENT" and attempt.status == "STATUS_CODE_ERROR"
    root = only([s for s in spans if s.parent_id is None])
    assert root.status == "STATUS_CODE_ERROR"


def test_metrics_move_by_exactly_the_requests_sent(
        chain: TracedChain, stub: step_pb2_grpc.StepServiceStub) -> None:
    ok = [raw_request(noisy_image(48, 64, seed=i)) for i in range(3)]
    bad = [raw_request(noisy_image(96, 128, seed=i)) for i in range(2)]
    before = {i: scrape(port) for i, port in chain.metrics_ports.items()}
    sent_back = 0
    for request in ok:
        sent_back += stub.Process(request, timeout=30).ByteSize()
    for request in bad:
        with pytest.raises(grpc.RpcError):
            stub.Process(request, timeout=30)
    after = {i: scrape(port) for i, port in chain.metrics_ports.items()}

    def delta(step: int, name: str, **labels: str) -> float:
        full = {"pipeline_id": "tel", "step_id": str(step), "step_type": TYPES[step], **labels}
        return sample(after[step], name, **full) - sample(before[step], name, **full)

    for step in range(3):
        assert delta(step, "stepchain_step_requests_total", grpc_code="OK") == 3
        assert delta(step, "stepchain_step_requests_total", grpc_code="RESOURCE_EXHAUSTED") == 2
        assert delta(step, "stepchain_step_duration_seconds_count") == 5
        assert delta(step, "stepchain_step_queue_wait_seconds_count") == 5
        assert sample(after[step], "stepchain_step_in_flight", pipeline_id="tel",
                      step_id=str(step), step_type=TYPES[step]) == 0
    # Steps 0 and 1 ran their kernels and forwarded all five; step 2 refused two at decode.
    assert [delta(s, "stepchain_step_kernel_seconds_count") for s in range(3)] == [5, 5, 3]
    assert [delta(s, "stepchain_step_forward_seconds_count") for s in range(3)] == [5, 5, 0]
    assert delta(0, "stepchain_step_received_bytes_total") == sum(
        r.ByteSize() for r in ok + bad)
    assert delta(0, "stepchain_step_sent_bytes_total") == sent_back
    assert delta(2, "stepchain_step_kernel_seconds_sum") > 0


def _png(path: Path) -> Path:
    buf = io.BytesIO()
    PILImage.fromarray(noisy_image(48, 64)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_submit_prints_the_trace_id_and_trace_show_draws_its_waterfall_from_the_file(
        chain: TracedChain, trace_file: Path, tmp_path: Path) -> None:
    env = {**step_env(), "STEPCHAIN_TRACE_FILE": str(trace_file)}
    done = _cli("submit", str(_png(tmp_path / "in.png")), "--target", chain.address(0),
                "--out", str(tmp_path / "out.png"), env=env)
    assert done.returncode == 0, done.stderr
    trace_lines = [line for line in done.stdout.splitlines() if line.startswith("trace: ")]
    assert len(trace_lines) == 1, done.stdout
    trace_id = trace_lines[0].removeprefix("trace: ").strip()
    assert len(trace_id) == 32 and int(trace_id, 16)

    deadline = time.monotonic() + 15
    while True:  # the steps' batch processors export within ~100 ms; allow a slow machine
        shown = _cli("trace", "show", trace_id, "--file", str(trace_file), "--width", "140",
                     env=env)
        servers = [line for line in shown.stdout.splitlines() if "(server)" in line]
        if len(servers) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id} · 19 spans")
    assert lines[2].startswith("stepchain submit ")
    for step_id, line in enumerate(servers):
        indent = len(line) - len(line.lstrip())
        # depth 2 (root > client > server), then 3 more per hop (forward > client > server)
        assert indent == 2 * (2 + 3 * step_id)
        assert f" step {step_id} {TYPES[step_id]} · " in line
        assert "tel-step-" not in line  # the step's service name would only repeat "step N"
    latest = _cli("trace", "show", str(trace_file), "--width", "140", env=env)
    assert latest.returncode == 0 and latest.stdout.splitlines()[0] == lines[0]

