"""stepsvc.protocol: the names steps and callers agree on, each matching what it names."""

from __future__ import annotations

import inspect

from stepchain.v1 import step_pb2_grpc

from native.registry import EXEC_PARAM_NAMES
from stepsvc.protocol import DESCRIBE_METHOD, OVERRIDE_NAMES, PROCESS_METHOD, SERVICE_NAME


def test_method_paths_are_the_ones_the_generated_stub_calls() -> None:
    stub_source = inspect.getsource(step_pb2_grpc.StepServiceStub)
    assert f"'{PROCESS_METHOD}'" in stub_source and f"'{DESCRIBE_METHOD}'" in stub_source
    assert SERVICE_NAME == "stepchain.v1.StepService"


def test_every_override_a_request_may_send_is_an_exec_parameter_of_the_kernels() -> None:
    assert OVERRIDE_NAMES == ("threads", "passes", "schedule")
    assert set(OVERRIDE_NAMES) <= EXEC_PARAM_NAMES
