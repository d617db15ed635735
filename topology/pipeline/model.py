"""The one model of a pipeline JSON, as written: the pydantic schema the API and CLI parse.

The format is the one existing Flask-based step pipelines use::

    {"name": "demo", "steps": [
        {"type": "classify", "next_step": [1, 2], "preferred_next": 1, "route": {"blurry": 2}},
        {"type": "grayscale", "next_step": 3},
        {"type": "deblur", "params": {"sigma": 1.5}, "next_step": 3},
        {"type": "resize", "params": {"scale": 0.5}}]}

An item of ``steps`` is a step, a nested list (flattened into the linear chain, in order, as
the Flask tool did) or ``{"alternatives": [...]}`` (a group of steps of which one runs).
Field-level checks (types, ranges, kernel names and parameters, DNS names) live here;
:mod:`topology.pipeline.graph` flattens the items and checks the graph. Every problem carries the
field path a user wrote (``loc``).
"""

from __future__ import annotations

import posixpath
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType

from native.registry import canonical_name, kernel_types
from stepsvc.step.config import (
    DNS1123_LABEL_RE,
    KernelParams,
    check_route_keys,
    format_loc,
    successors_as_list,
)

#: DNS-1035 label (what a Service name must be), kept short because `<name>-step-<N>-config`
#: and the Service `<name>-step-<N>` are built from it and must stay within 63 characters.
PIPELINE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_PIPELINE_NAME = 40
MAX_STEP_ID = 9999
MAX_STEPS = 256
MAX_REPLICAS = 100
MAX_THREADS = 256
#: Hard ceiling for one step's `gpu`; the service's own bound (`--max-gpus`) is a policy check.
MAX_GPU_FIELD = 64
#: Kubernetes resource quantity (e.g. 500m, 1.5, 256Mi, 1G).
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
#: What each quantity suffix multiplies by (decimal SI and binary IEC).
QUANTITY_FACTORS: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
#: Smallest memory limit a step may have: the step server (Python, gRPC, NumPy) needs about
#: this much before it holds an image, and its pixel budget is derived from the limit.
MIN_STEP_MEMORY = "64Mi"
#: Label keys: optional DNS subdomain prefix and a name of at most 63 characters.
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
#: An OCI image reference: [registry/]repository[:tag][@digest], lowercase repository.
IMAGE_RE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
#: Volume names the renderer uses itself.
RESERVED_VOLUMES = ("tmp",)
#: Mount paths the renderer uses itself (the step's writable emptyDir); below them is fine.
RESERVED_MOUNT_PATHS = ("/tmp",)
#: Where a volume must not be mounted, nor below: it would replace the step's root, the system
#: binaries and libraries, or kernel and runtime interfaces. `/lib*` covers lib32, lib64, ...
SYSTEM_MOUNT_PATHS = ("/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/var/run",
                      "/run", "/boot", "/root")
SYSTEM_MOUNT_RE = re.compile(r"^/lib[^/]*(/|$)")
#: ConfigMap names of stepchain step configs (`<pipeline_id>-step-<N>-config`, see
#: topology.kube.names.config_map_name): no pipeline may mount another's (or its own) routing.
STEP_CONFIG_MAP_RE = re.compile(r"-step-[0-9]+-config$")

Loc = tuple[str | int, ...]


def step_name(pipeline_id: str, step_id: int) -> str:
    """A step's name wherever it runs: ``<pipeline_id>-step-<N>``.

    Its Kubernetes Deployment and Service, its local process, its ``OTEL_SERVICE_NAME``;
    :data:`MAX_PIPELINE_NAME` keeps it (and the ``-config`` ConfigMap) within 63 characters.
    """
    return f"{pipeline_id}-step-{step_id}"



def kernel_type_enum(schema: dict[str, Any]) -> None:
    """The `type` field's enum: every installed kernel name and alias, built-ins and plugins,
    read when the schema is generated (so the OpenAPI document lists the plugins)."""
    schema["enum"] = list(kernel_types())


class PipelineInvalid(ValueError):
    """A pipeline that cannot be deployed, with one entry per problem: field path and message.

    `errors` uses the shape of pydantic/FastAPI validation errors (`loc`, `msg`, `type`) so the
    API returns both kinds alike.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in errors))

    @classmethod
    def single(cls, loc: Loc, msg: str, kind: str = "value_error") -> PipelineInvalid:
        return cls([{"loc": list(loc), "msg": msg, "type": kind}])

    @classmethod
    def from_validation_error(cls, exc: pydantic.ValidationError) -> PipelineInvalid:
        """Converts pydantic's errors, dropping the `step`/`group` tags from the field path."""
        return cls([{"loc": list(clean_loc(e["loc"])), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors(include_url=False)])


#: The tags pydantic inserts into a field path after a `steps` index (`steps.0.step.type`).
_ITEM_TAGS = ("step", "group", "alternatives")


def clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drops the union tags pydantic inserts after a `steps` index (`steps.0.step.type`)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in _ITEM_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(part)
    return tuple(out)


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity as a number: `1Gi` -> 1073741824, `500m` -> 0.5.

    The one quantity parser of the topology service. Raises ValueError for anything else.
    """
    text = str(value)
    match = QUANTITY_RE.match(text) if not isinstance(value, bool) else None
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1Gi)")
    suffix = match.group(2) or ""
    return Decimal(text[:len(text) - len(suffix)]) * QUANTITY_FACTORS[suffix]


_STEP_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_STEP_ID}
NextStep = Annotated[
    list[Annotated[int, Field(ge=0, le=MAX_STEP_ID)]] | None,
    BeforeValidator(successors_as_list),
    WithJsonSchema({"anyOf": [_STEP_ID_SCHEMA, {"type": "array", "items": _STEP_ID_SCHEMA},
                              {"type": "null"}],
                    "description": "successor step id(s); absent: the next item of `steps`"}),
]


def _bool_to_count(value: Any) -> Any:
    # `gpu: true` means one device.
    return int(value) if isinstance(value, bool) else value


GpuCount = Annotated[
    int,
    BeforeValidator(_bool_to_count),
    Field(ge=0, le=MAX_GPU_FIELD),
    WithJsonSchema({"anyOf": [{"type": "boolean"},
                              {"type": "integer", "minimum": 0, "maximum": MAX_GPU_FIELD}],
                    "description": "true or a count: the step's nvidia.com/gpu limit"}),
]


class ResourcesSpec(BaseModel):
    """Container resource requests/limits (cpu, memory, ephemeral-storage quantities)."""

    model_config = ConfigDict(extra="forbid")

    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, quantity in value.items():
            if name not in RESOURCE_NAMES:
                hint = " (use the step's `gpu` field for GPUs)" if "gpu" in name else ""
                raise ValueError(f"unknown resource {name!r}; allowed: "
                                 f"{', '.join(RESOURCE_NAMES)}{hint}")
            try:
                parse_quantity(quantity)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("limits")
    @classmethod
    def _memory_limit(cls, value: dict[str, str | int | float]) -> dict[str, str | int | float]:
        if "memory" in value and parse_quantity(value["memory"]) < parse_quantity(
                MIN_STEP_MEMORY):
            raise ValueError(f"memory: {value['memory']!r} is below the {MIN_STEP_MEMORY} a "
                             "step server needs")
        return value


class EmptyDirSpec(BaseModel):
    """An emptyDir volume source."""

    model_config = ConfigDict(extra="forbid")

    medium: Literal["", "Memory"] = ""
    sizeLimit: str | None = Field(None, pattern=QUANTITY_RE.pattern)


class VolumeSpec(BaseModel):
    """A volume mounted into the step container: exactly one of hostPath, emptyDir, configMap."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, pattern=DNS1123_LABEL_RE.pattern)
    mountPath: str = Field(min_length=1, max_length=1024)
    readOnly: bool = False
    hostPath: str | None = Field(None, min_length=1, max_length=1024,
                                 description="only under a --hostpath-allowlist prefix")
    emptyDir: EmptyDirSpec | None = None
    configMap: str | None = Field(None, max_length=253, pattern=DNS1123_LABEL_RE.pattern)

    @field_validator("mountPath", "hostPath")
    @classmethod
    def _absolute_clean(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith("/") or ".." in value.split("/") or "\x00" in value:
            raise ValueError(f"{value!r} must be an absolute path without '..'")
        # Checks below compare paths as written: `/etc/` or `//etc` must not slip past `/etc`.
        clean = "/" + posixpath.normpath(value).lstrip("/")
        if clean != value:
            raise ValueError(f"{value!r} is not a normalised path; write {clean!r}")
        return value

    @field_validator("mountPath")
    @classmethod
    def _not_system_path(cls, value: str) -> str:
        if value == "/":
            raise ValueError("mountPath '/' would replace the step's whole filesystem; mount "
                             "below a directory of your own, e.g. /data")
        for path in SYSTEM_MOUNT_PATHS:
            if value == path or value.startswith(path + "/"):
                raise ValueError(f"mountPath {value!r} is inside the system path {path}; mount "
                                 "below a directory of your own, e.g. /data")
        if SYSTEM_MOUNT_RE.match(value):
            raise ValueError(f"mountPath {value!r} is inside the system libraries (/lib*); "
                             "mount below a directory of your own, e.g. /data")
        if value in RESERVED_MOUNT_PATHS:
            raise ValueError(f"mountPath {value!r} is already the step's writable emptyDir; "
                             "mount below it or elsewhere")
        return value

    @field_validator("configMap")
    @classmethod
    def _not_step_config(cls, value: str | None) -> str | None:
        if value is not None and STEP_CONFIG_MAP_RE.search(value):
            raise ValueError(f"configMap {value!r} is named like a stepchain step config "
                             "(<pipeline>-step-<N>-config); those hold pipelines' routing and "
                             "are not mountable")
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_VOLUMES:
            raise ValueError(f"volume name {value!r} is reserved (the step's writable /tmp)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> VolumeSpec:
        given = [k for k in ("hostPath", "emptyDir", "configMap") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one of hostPath, emptyDir, "
                             f"configMap; got {', '.join(given) or 'none'}")
        return self


class AutoscaleSpec(BaseModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation for one step."""

    model_config = ConfigDict(extra="forbid")

    minReplicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    maxReplicas: int = Field(ge=1, le=MAX_REPLICAS)
    targetCPUUtilization: int = Field(80, ge=1, le=100, description="percent of the CPU request")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleSpec:
        if self.maxReplicas < self.minReplicas:
            raise ValueError(f"maxReplicas ({self.maxReplicas}) must be >= minReplicas "
                             f"({self.minReplicas})")
        return self


class StepDeployment(BaseModel):
    """How a step runs, wherever it runs: replicas, threads, resources, GPUs, volumes, node
    selector, autoscaling. Part of a step as written (:class:`StepSpec`) and of a checked step
    (:class:`topology.pipeline.graph.Step`), so both accept and write the same fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    threads: int = Field(1, ge=1, le=MAX_THREADS, description="OMP_NUM_THREADS of the step")
    resources: ResourcesSpec | None = None
    gpu: GpuCount = 0
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=32)
    nodeSelector: dict[str, str] = Field(default_factory=dict,
                                         validation_alias=AliasChoices("nodeSelector",
                                                                       "node_selector"))
    autoscale: AutoscaleSpec | None = None

    @field_validator("nodeSelector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if len(key) > 316 or not LABEL_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
            if not LABEL_VALUE_RE.match(val):
                raise ValueError(f"{key}: {val!r} is not a valid label value (at most 63 "
                                 "characters of A-Z, a-z, 0-9, '-', '_', '.')")
        return value

    @model_validator(mode="after")
    def _unique_volumes(self) -> StepDeployment:
        names = [v.name for v in self.volumes]
        mounts = [v.mountPath for v in self.volumes]
        for what, values in (("name", names), ("mountPath", mounts)):
            dup = sorted({x for x in values if values.count(x) > 1})
            if dup:
                raise ValueError(f"volumes: {what} {', '.join(dup)} used more than once")
        return self


class _WrittenRouting(BaseModel):
    """A step's routing as a user writes it: the id and successors may be left out (assigned
    in order, and the next item of ``steps``); the checked step's routing is the step config's
    (:class:`stepsvc.step.config.StepSpec`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: int | None = Field(None, ge=0, le=MAX_STEP_ID,
                           validation_alias=AliasChoices("step_id", "id"),
                           description="step id (`step_id` or `id`); absent: assigned in order")
    type: str = Field(description="kernel type or alias (case-insensitive)",
                      json_schema_extra=kernel_type_enum)
    params: KernelParams = Field(default_factory=dict, description="kernel parameters")
    next_step: NextStep = None
    preferred_next: int | None = Field(None, ge=0, le=MAX_STEP_ID)
    route: dict[str, Annotated[int, Field(ge=0, le=MAX_STEP_ID)]] = Field(
        default_factory=dict, description="classify label (or facet=label) -> step id tried first")

    @model_validator(mode="before")
    @classmethod
    def _one_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "step_id" in data and "id" in data \
                and data["step_id"] != data["id"]:
            raise ValueError(f"step_id ({data['step_id']!r}) and id ({data['id']!r}) disagree; "
                             "give one of them")
        if isinstance(data, dict) and "step_id" in data and "id" in data:
            data = {k: v for k, v in data.items() if k != "id"}
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return canonical_name(value)

    @field_validator("route")
    @classmethod
    def _route_keys(cls, value: dict[str, int]) -> dict[str, int]:
        return check_route_keys(value)


class StepSpec(StepDeployment, _WrittenRouting):
    """One step as written in the pipeline JSON."""


class AlternativesSpec(BaseModel):
    """``{"alternatives": [step, ...]}``: a group of steps of which one runs per request.

    The item before the group points to every member (choose with its ``preferred_next`` or
    ``route``); every member points to the item after the group.
    """

    model_config = ConfigDict(extra="forbid")

    alternatives: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS,
                                         description="the steps of the group, one of which runs")


def _item_kind(value: Any) -> str:
    if isinstance(value, list):
        return "group"
    if isinstance(value, dict) and "alternatives" in value:
        return "alternatives"
    return "step"


#: An item of `steps`: a step, a nested list of items (flattened in order) or alternatives.
StepItem = TypeAliasType(  # type: ignore[misc]
    "StepItem",
    Annotated[
        Annotated[StepSpec, Tag("step")]
        | Annotated[list["StepItem"], Tag("group")]  # type: ignore[misc]
        | Annotated[AlternativesSpec, Tag("alternatives")],
        Discriminator(_item_kind),
    ],
)


class PipelineSpec(BaseModel):
    """A pipeline JSON: an optional name/namespace/image and the steps (or groups of them)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="pipeline id: DNS-1035 label, at most 40 "
                                               "characters; absent: generated from the content")
    namespace: str | None = Field(None, description="Kubernetes namespace (DNS-1123 label)")
    image: str | None = Field(None, max_length=512,
                              description="step image; must match the image allow-list")
    colocate: bool = Field(False, description="run every step in one pod (one container per "
                                              "step) passing frames through shared memory; "
                                              "replicas scale the whole chain")
    steps: list[StepItem] = Field(min_length=1, max_length=MAX_STEPS,
                                  description="steps in order; a nested list is flattened into "
                                              "the chain in order; {\"alternatives\": [...]} "
                                              "is a group of which one step runs")

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > MAX_PIPELINE_NAME
                                  or not PIPELINE_NAME_RE.match(value)):
            raise ValueError(
                f"{value!r} is not a valid pipeline name: it must be a DNS-1123 label that "
                f"starts with a letter (a-z, 0-9, '-'), at most {MAX_PIPELINE_NAME} characters, "
                "because Service names are built from it")
        return value

    @field_validator("namespace")
    @classmethod
    def _dns_namespace(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not DNS1123_LABEL_RE.match(value)):
            raise ValueError(f"{value!r} is not a valid namespace: a DNS-1123 label "
                             "(a-z, 0-9, '-'), at most 63 characters")
        return value

    @field_validator("image")
    @classmethod
    def _image_ref(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_RE.match(value):
            raise ValueError(f"{value!r} is not an image reference "
                             "(registry/repository[:tag][@sha256:digest], lowercase repository)")
        return value
