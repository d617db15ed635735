"""Prometheus metrics of step servers inside one process: each server has its own registry."""

from __future__ import annotations

import grpc
from step_fixtures import MutableDiscovery, noisy_image, pipeline, raw_request
from stepchain.v1 import step_pb2, step_pb2_grpc
from telemetry_fixtures import sample, scrape

from stepsvc.step.server import ServerSettings, build_server
from stepsvc.telemetry import Tracing
from stepsvc.telemetry.metrics import StepMetrics
from stepsvc.telemetry.observer import StepTelemetry

STEPS = [{"id": 1, "type": "grayscale", "next_step": 2}, {"id": 2, "type": "identity"}]


def test_two_steps_in_one_process_count_into_their_own_registries_and_endpoints() -> None:
    discovery = MutableDiscovery()
    servers, telemetries, ports = [], [], {}
    try:
        for step_id in (2, 1):
            cfg = pipeline(step_id, STEPS)
            telemetry = StepTelemetry(cfg, Tracing.disabled(),
                                      StepMetrics("p1", step_id, cfg.this_step().type))
            server = build_server(cfg, discovery, ServerSettings(host="127.0.0.1", port=0),
                                  interceptors=telemetry.server_interceptors(),
                                  observer=telemetry)
            server.start()
            ports[step_id] = telemetry.start_metrics_http(0, "127.0.0.1")
            discovery.mapping[step_id] = server.address
            servers.append(server)
            telemetries.append(telemetry)
        with grpc.insecure_channel(discovery.mapping[1]) as channel:
            stub = step_pb2_grpc.StepServiceStub(channel)
            for seed in range(2):
                stub.Process(raw_request(noisy_image(seed=seed)), timeout=10)
            bad = step_pb2.ProcessRequest(image=step_pb2.Image(width=4, height=4, channels=3))
            try:
                stub.Process(bad, timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            else:
                raise AssertionError("an image without pixels was accepted")
        first, second = scrape(ports[1]), scrape(ports[2])
    finally:
        for server in servers:
            server.stop(0)
        for telemetry in telemetries:
            telemetry.close()
    one = {"pipeline_id": "p1", "step_id": "1", "step_type": "grayscale"}
    two = {"pipeline_id": "p1", "step_id": "2", "step_type": "identity"}
    assert sample(first, "stepchain_step_requests_total", **one, grpc_code="OK") == 2
    assert sample(first, "stepchain_step_requests_total", **one,
                  grpc_code="INVALID_ARGUMENT") == 1
    assert sample(second, "stepchain_step_requests_total", **two, grpc_code="OK") == 2
    assert sample(second, "stepchain_step_requests_total", **two,
                  grpc_code="INVALID_ARGUMENT") == 0  # the bad request never got past step 1
    assert sample(first, "stepchain_step_requests_total", **two, grpc_code="OK") == 0
    assert sample(first, "stepchain_step_forward_seconds_count", **one) == 2
    assert sample(second, "stepchain_step_forward_seconds_count", **two) == 0
    assert sample(first, "process_cpu_seconds_total") > 0  # process metrics in each registry
