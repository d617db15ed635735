"""Tracing configuration: what a process traces, decided from its ``OTEL_*`` environment.

Pure: :func:`tracing_config_from_env` is a function of the environment mapping, so every rule
below is tested without an SDK, an exporter or a server.

- ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none``. When unset, ``otlp``
  is used if ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, else nothing.
- ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``
  (``grpc``, the default, or ``http/protobuf``); headers, TLS and timeouts are read by the
  OTLP exporters themselves from their usual variables.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``; ``OTEL_SERVICE_NAME``;
  ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED``; ``OTEL_BSP_*`` (batching).
- ``STEPCHAIN_TRACE_FILE=PATH``: also append every span to PATH as OTLP JSON lines.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable naming the local OTLP JSON lines file.
TRACE_FILE_ENV = "STEPCHAIN_TRACE_FILE"

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


class TelemetryConfigError(ValueError):
    """An ``OTEL_*``/``STEPCHAIN_*`` variable has a value stepchain cannot use."""




@dataclass(frozen=True)
class TracingConfig:
    """What tracing a process does, decided from its environment."""

    exporters: tuple[str, ...] = ()
    otlp_protocol: str = "grpc"
    otlp_endpoint: str | None = None
    trace_file: Path | None = None
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when spans go somewhere (an exporter or the trace file)."""
        return bool(self.exporters) or self.trace_file is not None


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-encoded) as a dict."""
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(
                f"OTEL_RESOURCE_ATTRIBUTES: {item!r} is not key=value; expected e.g. "
                "'deployment.environment=dev,team=imaging'")
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _resolve_otlp_endpoint(env: Mapping[str, str], protocol: str) -> str | None:
    """The traces endpoint per the OTLP exporter spec (signal-specific wins; http appends path)."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not generic:
        return None
    if protocol == "http/protobuf":
        return generic.rstrip("/") + "/v1/traces"
    return generic


def tracing_config_from_env(env: Mapping[str, str], default_service_name: str) -> TracingConfig:
    """Reads the tracing configuration from `env` (normally ``os.environ``).

    Raises TelemetryConfigError naming the variable and the allowed values on bad input.
    """
    resource = {"service.name": default_service_name}
    resource.update(_parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        resource["service.name"] = service_name

    if _env_flag(env.get("OTEL_SDK_DISABLED")):
        return TracingConfig(resource_attributes=resource)

    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; allowed: "
            f"{', '.join(PROTOCOLS)}")
    endpoint = _resolve_otlp_endpoint(env, protocol)

    raw_exporters = env.get("OTEL_TRACES_EXPORTER")
    if raw_exporters is None or not raw_exporters.strip():
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip().lower() for n in raw_exporters.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; allowed: "
                f"{', '.join(EXPORTERS)} (set {TRACE_FILE_ENV}=PATH for a local JSON file)")
    exporters = tuple(dict.fromkeys(n for n in names if n != "none"))

    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise TelemetryConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; allowed: {', '.join(SAMPLERS)}")
    sampler_arg: float | None = None
    if sampler.endswith("traceidratio"):
        raw_arg = (env.get("OTEL_TRACES_SAMPLER_ARG") or "1.0").strip()
        try:
            sampler_arg = float(raw_arg)
        except ValueError:
            sampler_arg = -1.0
        if not 0.0 <= sampler_arg <= 1.0:
            raise TelemetryConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={raw_arg!r} is not a ratio; allowed: a number "
                "from 0.0 to 1.0")

    trace_file_raw = env.get(TRACE_FILE_ENV, "").strip()
    return TracingConfig(
        exporters=exporters,
        otlp_protocol=protocol,
        otlp_endpoint=endpoint,
        trace_file=Path(trace_file_raw) if trace_file_raw else None,
        sampler=sampler,
        sampler_arg=sampler_arg,
        resource_attributes=resource,
    )


def step_service_name(pipeline_id: str, step_id: int) -> str:
    """Default ``service.name`` of a step (``OTEL_SERVICE_NAME`` overrides it)."""
    return f"{pipeline_id}-step-{step_id}"

