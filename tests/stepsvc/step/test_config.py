"""The pipeline config a step reads (PIPELINE_CONFIG): parsing, every rejection, round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stepsvc.step.config import PipelineConfig, dump_config, load_config, parse_config

YAML = """
pipeline_id: demo
step_id: 0
steps:
  - id: 0
    type: classifier
    next_step: [1, 2]
    preferred_next: 2
    route: {blurry: 1}
  - {id: 1, type: blur, params: {sigma: 2, threads: 2}, next_step: 2}
  - {id: 2, type: sharpen, params: {amount: 1.5}}
"""


def doc(**changes: Any) -> dict[str, Any]:
    """The YAML example as a dict, with top-level fields or steps[i] fields replaced."""
    data: dict[str, Any] = json.loads(json.dumps(parse_config(YAML).model_dump()))
    for key, value in changes.items():
        match = re.fullmatch(r"step(\d+)_(\w+)", key)
        if match:
            data["steps"][int(match[1])][match[2]] = value
        else:
            data[key] = value
    return data


def test_parses_yaml_with_aliases_canonicalised() -> None:
    cfg = parse_config(YAML)
    assert cfg.pipeline_id == "demo"
    assert cfg.this_step().type == "classify"
    assert cfg.this_step().route == {"blurry": 1}
    assert cfg.step(1).type == "gaussian_blur"
    assert cfg.step(1).params == {"sigma": 2.0, "threads": 2}
    assert cfg.step(2).next_step == []


def test_parses_json() -> None:
    text = json.dumps({"pipeline_id": "p1", "step_id": 1, "steps": [
        {"id": 0, "type": "grayscale", "next_step": [1]},
        {"id": 1, "type": "edges"},
    ]})
    cfg = parse_config(text)
    assert cfg.this_step().type == "edges"
    assert cfg.step(0).next_step == [1]


@pytest.mark.parametrize(("written", "value"), [
    ("1e-1", 0.1), ("2E0", 2.0), ("1.5e+0", 1.5), (".5", 0.5), ("3", 3.0),
])
def test_yaml_floats_without_a_dot_are_numbers(written: str, value: float) -> None:
    cfg = parse_config("pipeline_id: p1\nstep_id: 1\nsteps:\n"
                       f"  - {{id: 1, type: blur, params: {{sigma: {written}}}}}\n")
    assert cfg.this_step().params == {"sigma": value}
    block = parse_config(f"pipeline_id: p1\nstep_id: 1\nsteps:\n  - id: 1\n    type: blur\n"
                         f"    params:\n      sigma: {written}\n")
    assert block.this_step().params == {"sigma": value}


def test_a_yaml_exponent_out_of_range_is_reported_as_a_number() -> None:
    with pytest.raises(ValueError) as info:
        parse_config("pipeline_id: p1\nstep_id: 1\nsteps:\n"
                     "  - {id: 1, type: blur, params: {radius: 1e9}}\n")
    assert "gaussian_blur.radius must be <= 300" in str(info.value)
    assert "got str" not in str(info.value)


def test_quoted_yaml_exponents_stay_strings() -> None:
    cfg = parse_config("pipeline_id: '1e3'\nstep_id: 1\nsteps:\n  - {id: 1, type: blur}\n")
    assert cfg.pipeline_id == "1e3"


def test_parses_yaml_flow_mapping() -> None:
    cfg = parse_config("{pipeline_id: p1, step_id: 0, steps: [{id: 0, type: identity}]}")
    assert cfg.this_step().type == "identity"


def test_next_step_accepts_int_or_list() -> None:
    assert parse_config(YAML).step(1).next_step == [2]
    assert parse_config(json.dumps(doc(step1_next_step=[2]))).step(1).next_step == [2]
    assert parse_config(json.dumps(doc(step2_next_step=None))).step(2).next_step == []


def test_null_params_route_and_next_step_mean_empty() -> None:
    data = doc(step2_params=None, step2_route=None, step2_next_step=None)
    last = parse_config(json.dumps(data)).step(2)
    assert (last.params, last.route, last.next_step) == ({}, {}, [])


def test_dump_parse_round_trip() -> None:
    cfg = parse_config(YAML)
    text = dump_config(cfg)
    assert parse_config(text) == cfg
    assert "pipeline_id: demo" in text


def test_params_keep_only_what_was_written() -> None:
    # Defaults are the kernel's business at call time; the ConfigMap shows what the user wrote.
    assert parse_config(YAML).step(2).params == {"amount": 1.5}


def test_models_are_frozen() -> None:
    cfg = parse_config(YAML)
    with pytest.raises(ValueError, match="frozen"):
        cfg.step_id = 2  # type: ignore[misc]


def test_unknown_step_lookup_names_the_known_ids() -> None:
    with pytest.raises(KeyError, match=r"no step 9; steps are \[0, 1, 2\]"):
        parse_config(YAML).step(9)


REJECTIONS = [
    # (name, document, field path, words of the problem)
    ("duplicate_ids", doc(step2_id=1), "steps[2].id", "duplicate step id 1"),
    ("dangling_preferred_next", doc(step0_preferred_next=5), "steps[0].preferred_next",
     "not one of next_step"),
    ("dangling_route_target", doc(step0_route={"blurry": 2, "dark": 9}), "steps[0].route.dark",
     "not one of next_step"),
    ("unknown_type", doc(step1_type="sepia"), "steps[1].type", "unknown kernel type 'sepia'"),
    ("bad_param_value", doc(step1_params={"sigma": -1}), "steps[1].params",
     "gaussian_blur.sigma must be > 0"),
    ("unknown_param", doc(step2_params={"strength": 2}), "steps[2].params",
     "does not take parameter(s) strength"),
    ("bad_pipeline_id", doc(pipeline_id="My_Pipeline"), "pipeline_id", "DNS-1123 label"),
    ("too_long_pipeline_id", doc(pipeline_id="p" * 64), "pipeline_id", "at most 63"),
    ("step_id_missing_from_steps", doc(step_id=4), "step_id", "not one of the steps [0, 1, 2]"),
    ("negative_step_id", doc(step1_id=-1), "steps[1].id", "greater than or equal to 0"),
    ("cycle", doc(step2_next_step=[0]), "steps", "cycle 0 -> 1 -> 2 -> 0"),
    ("repeated_successor", doc(step0_next_step=[1, 1]), "steps[0].next_step",
     "more than once"),
    ("unknown_field", doc(step1_nxt=2), "steps[1].nxt", "unknown field"),
    ("missing_pipeline_id", {"step_id": 0, "steps": [{"id": 0, "type": "identity"}]},
     "pipeline_id", "Field required"),
    ("no_steps", doc(steps=[]), "steps", "at least 1"),
    ("malformed_route_key", doc(step0_route={"=blurry": 1}), "steps[0].route",
     "facet=label"),
]


@pytest.mark.parametrize(("data", "path", "problem"), [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejection_names_the_field(data: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_config(json.dumps(data))
    message = str(info.value)
    assert message.startswith(f"PIPELINE_CONFIG: {path}: "), message
    assert problem in message


@pytest.mark.parametrize(("text", "problem"), [
    ("steps: [", "not valid YAML or JSON"),
    ('{"pipeline_id": ', "not valid YAML or JSON: Expecting value"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("", "must be a mapping"),
])
def test_rejects_text_that_is_not_a_mapping(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^PIPELINE_CONFIG: {problem}"):
        parse_config(text)


def test_load_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML)
    monkeypatch.setenv("MY_CONFIG", YAML)
    assert load_config(path=str(path)) == load_config(env="MY_CONFIG") == parse_config(YAML)


def test_load_reports_missing_file_and_unset_env(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match=r"cannot read config file .*nope\.yaml"):
        load_config(path=str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="environment variable NOT_SET_ANYWHERE is not set"):
        load_config(env="NOT_SET_ANYWHERE")


def test_load_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        load_config()
    with pytest.raises(ValueError, match="exactly one"):
        load_config(path="a.yaml", env="PIPELINE_CONFIG")


def test_topology_can_build_and_dump_a_config() -> None:
    # The topology service constructs the model directly and writes it with dump_config.
    cfg = PipelineConfig(pipeline_id="p", step_id=1, steps=[
        {"id": 0, "type": "identity", "next_step": 1},  # type: ignore[list-item]
        {"id": 1, "type": "upscaling", "params": {"scale": 2}},  # type: ignore[list-item]
    ])
    assert parse_config(dump_config(cfg)) == cfg
    assert cfg.this_step().type == "resize"


def test_next_step_naming_no_step_ends_the_pipeline_there_with_a_warning() -> None:
    config = PipelineConfig.model_validate(doc(step1_next_step=[7]))
    assert config.step(1).next_step == []
    assert config.warnings == (
        "PIPELINE_CONFIG: steps[1].next_step: step id 7 is not a step of this pipeline (steps "
        "are [0, 1, 2]); step 1 ends the pipeline there",)


def test_flask_tool_yaml_example_loads_with_step_1_ending_the_pipeline() -> None:
    config = parse_config("pipeline_id: my-pipeline\nstep_id: 0\nsteps: [{id: 0, type: "
                          "upscaling, params: {scale: 2}, next_step: 1, preferred_next: 1}, "
                          "{id: 1, type: classifier, params: {}, next_step: 2}]\n")
    assert (config.this_step().type, config.this_step().next_step) == ("resize", [1])
    assert config.step(1).next_step == []
    assert [w.split(":")[1].strip() for w in config.warnings] == ["steps[1].next_step"]


def test_flask_tool_one_step_json_example_is_a_last_step() -> None:
    config = parse_config('{"pipeline_id":"my-pipeline","step_id":0,"steps":[{"id":0,'
                          '"type":"upscaling","params":{"scale":2},"next_step":1}]}')
    assert config.this_step().next_step == []
    assert "steps[0].next_step" in config.warnings[0]
    assert "step 0 ends the pipeline there" in config.warnings[0]
