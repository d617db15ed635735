"""Pipeline JSON -> checked graph: Flask-era JSON, groups flattened, ids and links filled in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from topology.model import PipelineInvalid
from topology.pipeline import parse_pipeline

ROOT = Path(__file__).resolve().parent.parent


def graph(data: object) -> dict[int, tuple[int, ...]]:
    return {s.id: s.next_step for s in parse_pipeline(data).steps}


def test_sequential_pipeline_needs_neither_ids_nor_next_step() -> None:
    assert graph({"steps": [{"type": "blur"}, {"type": "sharpen"}, {"type": "edges"}]}) == {
        0: (1,), 1: (2,), 2: ()}


def test_nested_list_is_a_group_of_alternatives_between_its_neighbours() -> None:
    pipeline = parse_pipeline({"steps": [
        {"type": "classify"}, [{"type": "grayscale"}, {"type": "deblur"}], {"type": "resize"}]})
    assert {s.id: s.next_step for s in pipeline.steps} == {
        0: (1, 2), 1: (3,), 2: (3,), 3: ()}
    assert pipeline.entry_step == 0
    assert [s.type for s in pipeline.steps] == ["classify", "grayscale", "deblur", "resize"]


def test_nested_example_file_flattens_in_order() -> None:
    pipeline = parse_pipeline(json.loads((ROOT / "examples" / "nested.json").read_text()))
    assert [(s.id, s.type, s.next_step) for s in pipeline.steps] == [
        (0, "classify", (1, 2)), (1, "sharpen", (3,)), (2, "deblur", (3,)),
        (3, "brightness", (4,)), (4, "resize", ())]
    assert pipeline.step(0).route == {"blurry": 2}


def test_step_id_and_id_are_both_accepted_and_next_step_may_be_a_bare_int() -> None:
    assert graph({"steps": [{"step_id": 0, "type": "blur", "next_step": 5},
                            {"id": 5, "type": "edges"}]}) == {0: (5,), 5: ()}


def test_absent_ids_continue_after_the_largest_id_so_far() -> None:
    assert graph({"steps": [{"id": 10, "type": "blur"}, {"type": "edges"}]}) == {
        10: (11,), 11: ()}


def test_aliases_become_canonical_kernel_types() -> None:
    pipeline = parse_pipeline({"steps": [{"type": "Detection"}, {"type": "upscaling"},
                                         {"type": "blur"}]})
    assert [s.type for s in pipeline.steps] == ["classify", "resize", "gaussian_blur"]


def test_gpu_true_means_one_device() -> None:
    assert parse_pipeline({"steps": [{"type": "blur", "gpu": True}]}).steps[0].gpu == 1


def test_example_pipeline_routes_blurry_images_to_deblur() -> None:
    pipeline = parse_pipeline(json.loads((ROOT / "examples" / "pipeline.json").read_text()))
    entry = pipeline.step(pipeline.entry_step)
    assert (entry.type, entry.next_step, entry.preferred_next, entry.route) == (
        "classify", (1, 2), 1, {"blurry": 2})
    assert pipeline.step(2).type == "deblur"


def test_unnamed_pipeline_gets_a_stable_generated_id() -> None:
    data = {"steps": [{"type": "edges"}]}
    first, second = parse_pipeline(data), parse_pipeline(data)
    assert first.pipeline_id == second.pipeline_id
    assert first.pipeline_id.startswith("pipeline-")
    assert parse_pipeline({"steps": [{"type": "blur"}]}).pipeline_id != first.pipeline_id


def test_fingerprint_changes_with_the_definition() -> None:
    a = parse_pipeline({"name": "p", "steps": [{"type": "edges"}]})
    b = parse_pipeline({"name": "p", "steps": [{"type": "edges", "replicas": 2}]})
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == parse_pipeline({"name": "p", "steps": [{"type": "edges"}]}).fingerprint


def test_errors_list_every_problem_with_its_path() -> None:
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline({"steps": [{"type": "blur", "next_step": [7], "preferred_next": 9}]})
    locs = [e["loc"] for e in caught.value.errors]
    assert ["steps", 0, "next_step"] in locs
    assert ["steps", 0, "preferred_next"] in locs
    assert "steps[0].next_step" in str(caught.value)
