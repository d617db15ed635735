"""``GET /kernels``: the kernels this service validates pipelines against, built-ins and
plugins, each with the package it came from, and the plugins that failed to load.

What ``stepchain kernels --json`` prints for the service's own environment (its image): a
pipeline naming a type missing here is refused with a 422. Reads are open, like every GET.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field


class KernelOut(BaseModel):
    """One kernel's specification (native.spec.KernelSpec) and its origin."""

    name: str = Field(description="canonical name: built-ins plain, plugins 'namespace.name'")
    aliases: list[str]
    doc: str
    package: str = Field(description="'stepchain' for a built-in, else the plugin's distribution")
    version: str
    builtin: bool
    entry_point: str = Field(description="the plugin's stepchain.kernels entry point")
    output: str = Field(description="image, or measure (labels; the image passes through)")
    resizes: bool
    output_bound: bool
    releases_gil: bool
    tiling: dict[str, Any] = Field(description="{tileable, halo_default} or {tileable, reason}")
    params: dict[str, Any] = Field(description="JSON Schema of the step's params object")


class FailedPlugin(BaseModel):
    """An installed plugin that was not registered, and why."""

    name: str
    package: str
    version: str
    entry_point: str
    reason: str


class KernelCatalog(BaseModel):
    kernels: list[KernelOut]
    failed: list[FailedPlugin]


def kernels_router() -> APIRouter:
    router = APIRouter()

    @router.get("/kernels", response_model=KernelCatalog, tags=["kernels"])
    def kernels() -> Any:
        """Every kernel a pipeline step may name, with its package; failed plugins with the
        reason."""
        from native.registry import catalog

        return catalog()

    return router
