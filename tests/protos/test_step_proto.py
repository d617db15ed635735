"""The committed gRPC code is what `make proto` generates from protos/stepchain/v1/step.proto."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("step_pb2.py", "step_pb2.pyi", "step_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is a test dependency")
    src = tmp_path / "protos" / "stepchain" / "v1"
    src.mkdir(parents=True)
    shutil.copy(ROOT / "protos" / "stepchain" / "v1" / "step.proto", src / "step.proto")
    out = tmp_path / "protos"
    rc = protoc.main(["grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                      f"--pyi_out={out}", f"--grpc_python_out={out}",
                      str(src / "step.proto")])
    assert rc == 0
    stale = [name for name in GENERATED
             if (src / name).read_text() != (ROOT / "protos/stepchain/v1" / name).read_text()]
    assert not stale, f"{stale} are stale: run `make proto` and commit the result"


def test_every_message_and_field_of_the_proto_is_documented() -> None:
    text = (ROOT / "protos" / "stepchain" / "v1" / "step.proto").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(text):
        stripped = line.strip()
        declares = stripped.startswith(("message ", "service ", "rpc ", "enum "))
        if declares and not text[i - 1].strip().startswith("//"):
            undocumented.append(stripped)
    assert not undocumented, f"add a // comment above: {undocumented}"
