"""The one loader of a step's pipeline config (the ConfigMap key ``PIPELINE_CONFIG``).

A step process learns the whole pipeline's routing graph plus which step it is::

    pipeline_id: demo
    step_id: 0
    steps:
      - {id: 0, type: classify, next_step: [1, 2], preferred_next: 2, route: {blurry: 1}}
      - {id: 1, type: deblur, params: {sigma: 1.5}, next_step: 2}
      - {id: 2, type: sharpen}

YAML or JSON. Every problem is reported as ``ValueError("PIPELINE_CONFIG: <field path>:
<problem>")`` so an operator can find the offending line of the ConfigMap. A ``next_step`` (or
``preferred_next``/``route`` target) naming no step of the pipeline ends the pipeline at that
step, as in the Flask-era format ("next step, if present"): the link is dropped and
:attr:`PipelineConfig.warnings` says so in the same words, for ``step serve`` to log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Annotated, Any

import pydantic
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from native.registry import canonical_name, validate_params
from stepsvc.step.graph import ends_pipeline_message, find_cycle

#: Prefix of every error message: the ConfigMap key / env var the text came from.
SOURCE = "PIPELINE_CONFIG"

#: RFC 1123 label (what Kubernetes accepts as a Service name component).
DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def written_params(kernel: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked and normalised for `kernel`, keeping only the keys the user wrote.

    Raises ValueError (from :func:`native.registry.validate_params`) naming a bad parameter.
    """
    checked = validate_params(kernel, params, allow_exec=True)
    # Keep only what the user wrote (normalised), so a dumped config stays faithful to the
    # input; the kernel fills its own defaults at call time.
    return {k: checked[k] for k in params if k in checked}


def kernel_params_of_step(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """`value` as :func:`written_params` for the kernel in the step's ``type`` field (left as it
    is when the type itself was invalid: that is reported on its own)."""
    kernel = info.data.get("type")
    if kernel is None:
        return value
    return written_params(kernel, value)


#: A step's ``params``, checked against its kernel: shared by this config model and the topology
#: service's pipeline model (``topology.pipeline.model``), so both accept and normalise the same params.
KernelParams = Annotated[dict[str, Any], AfterValidator(kernel_params_of_step)]


def successors_as_list(value: Any) -> Any:
    """`next_step` as a list: the Flask-era pipeline format writes a single successor as a bare
    int (``3`` -> ``[3]``); anything else is left to validation. Shared with the service's
    pipeline model (``topology.pipeline.model``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def check_route_keys(route: dict[str, int]) -> dict[str, int]:
    """`route` unchanged if every key is a classify label or ``facet=label``; else ValueError."""
    for key in route:
        facet, sep, label = key.partition("=")
        if not key.strip() or (sep and (not facet.strip() or not label.strip())):
            raise ValueError(
                f"route key {key!r} must be a classify label (e.g. 'blurry') "
                "or facet=label (e.g. 'sharpness=blurry')")
    return route


class StepSpec(BaseModel):
    """One step of the pipeline: its kernel, parameters and where it may forward to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0)
    type: str
    params: KernelParams = Field(default_factory=dict)
    next_step: list[int] = Field(default_factory=list)
    preferred_next: int | None = None
    route: dict[str, int] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        return canonical_name(value)

    @field_validator("params", "route", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("next_step", mode="before")
    @classmethod
    def _int_or_list(cls, value: Any) -> Any:
        return [] if value is None else successors_as_list(value)

    @field_validator("next_step")
    @classmethod
    def _unique_non_negative(cls, value: list[int]) -> list[int]:
        for step_id in value:
            if step_id < 0:
                raise ValueError(f"step ids must be >= 0, got {step_id}")
        duplicates = sorted({s for s in value if value.count(s) > 1})
        if duplicates:
            raise ValueError(f"lists step id(s) {duplicates} more than once")
        return value

    @field_validator("route")
    @classmethod
    def _route_keys(cls, value: dict[str, int]) -> dict[str, int]:
        return check_route_keys(value)

    @model_validator(mode="after")
    def _successors(self) -> StepSpec:
        if self.preferred_next is not None and self.preferred_next not in self.next_step:
            raise _FieldError(
                "preferred_next",
                f"{self.preferred_next} is not one of next_step {self.next_step}")
        for label, target in self.route.items():
            if target not in self.next_step:
                raise _FieldError(
                    f"route.{label}", f"{target} is not one of next_step {self.next_step}")
        return self


class PipelineConfig(BaseModel):
    """The whole pipeline as one step process sees it, plus which step that process is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline_id: str
    step_id: int = Field(ge=0)
    steps: list[StepSpec] = Field(min_length=1)
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        """What was accepted but changed (links to no step dropped), as "PIPELINE_CONFIG:
        <field path>: <what it means>" lines."""
        return self._warnings

    @field_validator("pipeline_id")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not DNS1123_LABEL_RE.match(value):
            raise ValueError(
                f"{value!r} must be a DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', "
                "starting and ending with a letter or digit")
        return value

    @model_validator(mode="after")
    def _graph(self) -> PipelineConfig:
        index: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            if step.id in index:
                raise _FieldError(
                    f"steps[{i}].id", f"duplicate step id {step.id} (also steps[{index[step.id]}])")
            index[step.id] = i
        known = sorted(index)
        warnings: list[str] = []
        steps = list(self.steps)
        for i, step in enumerate(self.steps):
            steps[i] = _end_dangling(step, f"steps[{i}]", index, warnings)
        if self.step_id not in index:
            raise _FieldError("step_id", f"{self.step_id} is not one of the steps {known}")
        cycle = find_cycle({s.id: s.next_step for s in steps})
        if cycle:
            path = " -> ".join(str(s) for s in cycle)
            raise _FieldError("steps", f"next_step forms a cycle {path}; a request would never end")
        if not warnings:
            return self
        cleaned = self.model_copy(update={"steps": steps})
        cleaned._warnings = tuple(f"{SOURCE}: {w}" for w in warnings)
        return cleaned

    def this_step(self) -> StepSpec:
        """The step this process runs."""
        return self.step(self.step_id)

    def step(self, step_id: int) -> StepSpec:
        """The step with id `step_id`; KeyError naming the known ids if there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"pipeline {self.pipeline_id!r} has no step {step_id}; "
                       f"steps are {sorted(s.id for s in self.steps)}")


def _end_dangling(step: StepSpec, path: str, index: dict[int, int],
                  warnings: list[str]) -> StepSpec:
    """`step` without its links to ids that are no step of the pipeline, each one warned."""
    known = sorted(index)
    missing = [s for s in step.next_step if s not in index]
    if not missing:
        return step
    kept = [s for s in step.next_step if s in index]
    warnings.append(f"{path}.next_step: {ends_pipeline_message(step.id, missing, known, kept)}")
    update: dict[str, Any] = {"next_step": kept}
    if step.preferred_next in missing:
        update["preferred_next"] = None
    if any(target in missing for target in step.route.values()):
        update["route"] = {k: v for k, v in step.route.items() if v not in missing}
    return step.model_copy(update=update)


class _FieldError(ValueError):
    """A cross-field problem that knows its field path (pydantic reports those at the root)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def format_loc(loc: Sequence[int | str]) -> str:
    """`["steps", 2, 0, "next_step"]` as `steps[2][0].next_step` (how a user reads a path);
    the step config's messages and the pipeline model's (topology) write paths alike."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        base = format_loc(err["loc"]) if err["loc"] else ""
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            path = f"{base}.{cause.path}" if base else cause.path
            problems.append(f"{path}: {cause.problem}")
            continue
        message = str(cause) if isinstance(cause, ValueError) else err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field; allowed: " + _allowed_fields(err["loc"])
        problems.append(f"{base or '(top level)'}: {message}")
    return "; ".join(problems)


def _allowed_fields(loc: tuple[int | str, ...]) -> str:
    model = StepSpec if loc and loc[0] == "steps" and len(loc) > 2 else PipelineConfig
    return ", ".join(model.model_fields)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (``1e9``, ``1e-1``) as numbers.

    PyYAML implements YAML 1.1, where a float needs a dot: ``sigma: 1e-1`` would otherwise be
    the string "1e-1" and fail validation as "must be a number, got str".
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # Only what YAML 1.1 misses: a mantissa with an optional dot, then an exponent. Dotted
    # floats (1.5, .5, 1.5e3) and ints keep resolving through SafeLoader's own resolvers.
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml_or_json(text: str) -> Any:
    looks_like_json = text.lstrip().startswith("{")
    if looks_like_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            json_error: json.JSONDecodeError | None = exc
    else:
        json_error = None
    try:
        # A YAML flow mapping ({a: 1}) also starts with "{": YAML is the fallback either way.
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        # JSON's message is the clearer one for text that was meant to be JSON.
        raise ValueError(f"{SOURCE}: not valid YAML or JSON: {json_error or exc}") from None


def parse_config(text: str) -> PipelineConfig:
    """Parses a PIPELINE_CONFIG document (YAML or JSON) into a validated PipelineConfig.

    Raises ValueError("PIPELINE_CONFIG: <field path>: <problem>") for anything invalid.
    """
    data = _load_yaml_or_json(text)
    if not isinstance(data, dict):
        raise ValueError(
            f"{SOURCE}: must be a mapping with pipeline_id, step_id and steps; "
            f"got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValueError(f"{SOURCE}: {_describe(exc)}") from None


def load_config(path: str | None = None, env: str | None = None) -> PipelineConfig:
    """Loads the config from a file `path` or from the environment variable named `env`.

    Exactly one of them must be given. Unreadable files and unset variables raise ValueError.
    """
    if (path is None) == (env is None):
        raise ValueError("load_config needs exactly one of path (a file) or env (a variable name)")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ValueError(f"{SOURCE}: cannot read config file {path}: {exc.strerror}") from None
    else:
        assert env is not None
        text = os.environ.get(env, "")
        if not text.strip():
            raise ValueError(f"{SOURCE}: environment variable {env} is not set or empty")
    return parse_config(text)


def dump_config(cfg: PipelineConfig) -> str:
    """YAML text of `cfg` that parse_config reads back to an equal PipelineConfig."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
