"""Pipeline JSON -> checked graph: Flask-era JSON, groups flattened, ids and links filled in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from topology.pipeline.graph import parse_pipeline
from topology.pipeline.model import PipelineInvalid

ROOT = Path(__file__).resolve().parents[3]


def graph(data: object) -> dict[int, tuple[int, ...]]:
    return {s.id: s.next_step for s in parse_pipeline(data).steps}


def test_sequential_pipeline_needs_neither_ids_nor_next_step() -> None:
    assert graph({"steps": [{"type": "blur"}, {"type": "sharpen"}, {"type": "edges"}]}) == {
        0: (1,), 1: (2,), 2: ()}


def test_nested_list_flattens_into_a_linear_chain_in_order_like_the_flask_tool() -> None:
    pipeline = parse_pipeline({"steps": [
        {"type": "resize"}, [{"type": "grayscale"}, {"type": "blur"}], {"type": "classify"}]})
    assert {s.id: s.next_step for s in pipeline.steps} == {0: (1,), 1: (2,), 2: (3,), 3: ()}
    assert [s.type for s in pipeline.steps] == ["resize", "grayscale", "gaussian_blur",
                                                "classify"]
    assert pipeline.warnings == ()


def test_deeply_nested_lists_flatten_too_and_keep_their_field_paths() -> None:
    pipeline = parse_pipeline({"steps": [[{"type": "blur"}, [{"type": "sharpen"}]],
                                         {"type": "edges"}]})
    assert [(s.id, s.type, s.next_step, s.loc) for s in pipeline.steps] == [
        (0, "gaussian_blur", (1,), ("steps", 0, 0)), (1, "sharpen", (2,), ("steps", 0, 1, 0)),
        (2, "edges", (), ("steps", 1))]


def test_alternatives_key_is_a_group_of_which_one_runs_between_its_neighbours() -> None:
    pipeline = parse_pipeline({"steps": [
        {"type": "classify", "route": {"blurry": 2}},
        {"alternatives": [{"type": "grayscale"}, {"type": "deblur"}]},
        {"type": "resize"}]})
    assert {s.id: s.next_step for s in pipeline.steps} == {
        0: (1, 2), 1: (3,), 2: (3,), 3: ()}
    assert pipeline.entry_step == 0
    assert pipeline.step(0).route == {"blurry": 2}
    assert pipeline.step(2).loc == ("steps", 1, "alternatives", 1)


def test_nested_example_file_flattens_in_order() -> None:
    pipeline = parse_pipeline(json.loads((ROOT / "examples" / "nested.json").read_text()))
    assert [(s.id, s.type, s.next_step) for s in pipeline.steps] == [
        (0, "resize", (1,)), (1, "grayscale", (2,)), (2, "gaussian_blur", (3,)),
        (3, "classify", ())]


def test_alternatives_example_file_gives_the_documented_ids() -> None:
    data = json.loads((ROOT / "examples" / "alternatives.json").read_text())
    pipeline = parse_pipeline(data)
    assert [(s.id, s.type, s.next_step) for s in pipeline.steps] == [
        (0, "classify", (1, 2)), (1, "sharpen", (3,)), (2, "deblur", (3,)),
        (3, "brightness", (4,)), (4, "resize", ())]
    assert pipeline.step(0).route == {"blurry": 2}


def test_empty_nested_list_is_refused_with_its_path() -> None:
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline({"steps": [{"type": "blur"}, []]})
    assert caught.value.errors[0]["loc"] == ["steps", 1]


def test_next_step_naming_no_step_ends_the_pipeline_there_with_a_warning() -> None:
    pipeline = parse_pipeline({"steps": [
        {"step_id": 0, "type": "upscaling", "params": {"scale": 2}, "next_step": 1},
        {"step_id": 1, "type": "classifier", "params": {}, "next_step": 2}]})
    assert {s.id: s.next_step for s in pipeline.steps} == {0: (1,), 1: ()}
    assert [str(w) for w in pipeline.warnings] == [
        "steps[1].next_step: step id 2 is not a step of this pipeline (steps are [0, 1]); "
        "step 1 ends the pipeline there"]


def test_next_step_to_no_step_keeps_the_other_successors() -> None:
    pipeline = parse_pipeline({"steps": [{"id": 0, "type": "blur", "next_step": [1, 7],
                                          "preferred_next": 7},
                                         {"id": 1, "type": "edges"}]})
    assert pipeline.step(0).next_step == (1,)
    assert pipeline.step(0).preferred_next is None
    assert [w.loc for w in pipeline.warnings] == [("steps", 0, "next_step"),
                                                  ("steps", 0, "preferred_next")]


def test_strict_refuses_a_next_step_to_no_step_naming_the_field() -> None:
    data = {"steps": [{"type": "blur", "next_step": 5}]}
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline(data, strict=True)
    assert caught.value.errors[0]["loc"] == ["steps", 0, "next_step"]
    assert "steps[0].next_step" in str(caught.value)
    assert parse_pipeline(data).step(0).next_step == ()


@pytest.mark.parametrize(("steps", "field"), [
    ([{"id": 0, "type": "blur", "next_step": 1}, {"id": 1, "type": "edges", "next_step": 0}],
     "next_step"),
    ([{"id": 0, "type": "blur"}, {"id": 0, "type": "edges"}], "step_id"),
    ([{"type": "no-such-kernel"}], "type"),
])
def test_cycles_duplicate_ids_and_unknown_types_stay_errors(steps: list[object],
                                                            field: str) -> None:
    with pytest.raises(PipelineInvalid) as caught:
        parse_pipeline({"steps": steps})
    assert caught.value.errors[0]["loc"][-1] == field


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
        parse_pipeline({"steps": [{"id": 0, "type": "blur", "next_step": [1, 1],
                                   "preferred_next": 2},
                                  {"id": 1, "type": "edges"}, {"id": 2, "type": "blur"}]})
    locs = [e["loc"] for e in caught.value.errors]
    assert ["steps", 0, "next_step"] in locs
    assert ["steps", 0, "preferred_next"] in locs
    assert "steps[0].next_step" in str(caught.value)
