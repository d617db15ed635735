"""`stepchain trace show|list`: the waterfall from an OTLP JSON file (from a real Jaeger's
query API: tests/test_telemetry_jaeger.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stepsvc.cli import main
from stepsvc.client.trace import cli as trace_cli
from stepsvc.client.trace.show import SpanRecord, render_waterfall
from stepsvc.telemetry import TRACE_FILE_ENV, Tracing, current_trace_id

MS = 1_000_000  # nanoseconds
T0 = 1_700_000_000_000 * MS // 1000 * 1000


def span(span_id: str, parent: str | None, name: str, start_ms: float, end_ms: float,
         **kw: Any) -> SpanRecord:
    return SpanRecord(trace_id="ab" * 16, span_id=span_id, parent_id=parent, name=name,
                      service=kw.pop("service", "svc"), start_ns=T0 + int(start_ms * MS),
                      end_ns=T0 + int(end_ms * MS), **kw)


def test_waterfall_rows_are_indented_by_depth_with_bars_placed_by_start_and_duration() -> None:
    spans = [
        span("c2", "s1", "kernel", 40, 60),  # out of order on purpose: rows follow the tree
        span("r0", None, "stepchain submit", 0, 100, service="client"),
        span("s1", "r0", "stepchain.v1.StepService/Process", 10, 90, kind="SERVER",
             attributes={"stepchain.step_id": 0, "stepchain.step_type": "grayscale",
                         "stepchain.threads": 2, "stepchain.pixels": 2_073_600,
                         "stepchain.megapixels_per_second": 412.5}),
        span("c1", "s1", "decode", 10, 40, status="ERROR", status_message="bad PNG"),
    ]
    # 196 columns: name 30, ms 10, details 53 (the longest), so the time axis gets 100: 1 ms each
    lines = render_waterfall(spans, width=196, ascii_only=True).splitlines()
    assert lines[0] == ("trace " + "ab" * 16 + " · 4 spans · 100.00 ms · services: client, svc"
                        " · 1 error(s)")
    assert lines[1] == "span".ljust(30) + " " + "ms".rjust(10) + " 0 ms" + " " * 87 + "100.00 ms"
    assert lines[5] == "      error: bad PNG"  # a failed span's message on a line of its own
    rows = lines[2:5] + lines[6:]
    names = [line[:30].rstrip() for line in rows]
    assert names == ["stepchain submit", "  StepService/Process (server)", "    decode",
                     "    kernel"]
    assert [line[31:41] for line in rows] == ["   100.000", "    80.000", "    30.000",
                                              "    20.000"]
    bars = [line[42:142].ljust(100) for line in rows]
    assert bars[0] == "#" * 100
    assert bars[1] == " " * 10 + "#" * 80 + " " * 10
    assert bars[2] == " " * 10 + "!" * 30 + " " * 60  # errors drawn differently
    assert bars[3] == " " * 40 + "#" * 20 + " " * 40
    assert lines[2].endswith(" client")
    assert lines[3].endswith(" svc · step 0 grayscale · 2 thr · 2.07 MP · 412.5 MP/s")
    assert rows[2].endswith(" ERROR")


def test_a_call_its_caller_cancelled_is_shown_cancelled_not_as_an_error() -> None:
    spans = [
        span("s1", None, "stepchain.v1.StepService/Process", 0, 50, kind="SERVER",
             attributes={"stepchain.step_id": 0, "stepchain.step_type": "deblur",
                         "rpc.grpc.status_code": 1}),
        span("c1", "s1", "kernel", 5, 45),
    ]
    text = render_waterfall(spans, width=120)
    header, _, row = text.splitlines()[:3]
    assert "error" not in header and "cancelled by the caller at 1 step(s)" in header
    assert row.endswith("step 0 deblur · CANCELLED") and "▓" not in row


def test_a_span_whose_parent_is_missing_is_shown_as_a_root_not_dropped() -> None:
    lines = render_waterfall([span("a", "gone", "orphan", 0, 1)], width=80).splitlines()
    assert lines[2].startswith("orphan ")


def test_spans_whose_parent_links_form_a_cycle_are_each_drawn_once_not_a_crash() -> None:
    spans = [span("a", "a", "self-parented", 0, 2), span("b", "c", "loop-1", 1, 3),
             span("c", "b", "loop-2", 2, 4)]
    lines = render_waterfall(spans, width=100).splitlines()
    names = sorted(line.split()[0] for line in lines[2:])
    assert names == ["loop-1", "loop-2", "self-parented"]


@pytest.fixture
def trace_file(tmp_path: Path) -> tuple[Path, list[str]]:
    """Two traces written by the real file exporter; returns (file, [older id, newer id])."""
    path = tmp_path / "spans.jsonl"
    tracing = Tracing.from_env("writer", env={"STEPCHAIN_TRACE_FILE": str(path)})
    ids = []
    for root in ("first", "second"):
        with tracing.span(root):
            ids.append(current_trace_id())
            with tracing.span("kernel", {"stepchain.step_id": 1,
                                         "stepchain.step_type": "edges"}):
                pass
        tracing.force_flush()
    tracing.shutdown()
    return path, ids


def test_show_file_draws_the_latest_trace(trace_file: tuple[Path, list[str]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = trace_file
    assert main(["trace", "show", str(path), "--width", "90"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"trace {ids[1]} · 2 spans")
    assert [line.split()[0] for line in lines[2:]] == ["second", "kernel"]
    assert "writer · step 1 edges" not in lines[3]  # service is named where it changes
    assert "step 1 edges" in lines[3]


def test_show_trace_id_picks_that_trace_from_the_file(trace_file: tuple[Path, list[str]],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = trace_file
    assert main(["trace", "show", ids[0].upper(), "--file", str(path), "--ascii"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trace {ids[0]} · 2 spans") and "\nfirst " in out


def test_show_reads_the_trace_file_from_the_environment_the_steps_write_to(
        trace_file: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, ids = trace_file
    assert trace_cli.TRACE_FILE_ENV == TRACE_FILE_ENV == "STEPCHAIN_TRACE_FILE"
    monkeypatch.setenv(TRACE_FILE_ENV, str(path))
    assert main(["trace", "show", ids[0]]) == 0
    assert capsys.readouterr().out.startswith(f"trace {ids[0]}")


def test_list_shows_every_trace_latest_first(trace_file: tuple[Path, list[str]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = trace_file
    assert main(["trace", "list", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [ids[1], ids[0]]
    assert rows[0].endswith("second [writer]")


def test_unknown_trace_id_or_missing_source_is_an_error_saying_what_to_do(
        trace_file: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = trace_file
    monkeypatch.delenv("STEPCHAIN_TRACE_FILE", raising=False)
    assert main(["trace", "show", "0" * 32, "--file", str(path), "--wait", "0.3"]) == 1
    assert f"trace {'0' * 32} is not in {path} (2 trace(s) there" in capsys.readouterr().err
    assert main(["trace", "show", "1" * 32]) == 2
    assert "pass --jaeger URL" in capsys.readouterr().err
    assert main(["trace", "show", "no-such-file.jsonl"]) == 2
    assert "neither a file nor a trace id" in capsys.readouterr().err


def test_a_file_that_is_not_otlp_json_lines_is_refused_naming_the_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\n{"hello": 1}\n')
    assert main(["trace", "show", str(bad)]) == 1
    assert f"{bad}:2: no 'resourceSpans'" in capsys.readouterr().err
