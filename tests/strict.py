"""Strict checks of API responses against the anthropic SDK's own pydantic types.

The SDK parses leniently (missing fields pass, unknown fields are kept), so a test that only calls
the SDK proves little. `check` validates the raw JSON with real pydantic validation and then fails
on any field the SDK type does not declare, at any depth."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter


def _no_extras(value: Any, path: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        # Custom tool input schemas are free-form JSON Schema: extras are their point.
        if extra and type(value).__name__ != "BetaManagedAgentsCustomToolInputSchema":
            raise AssertionError(f"{path}: fields not in {type(value).__name__}: {sorted(extra)}")
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_extras(item, f"{path}.{key}")


def check(type_: Any, data: Any) -> Any:
    """Validate `data` (parsed JSON) as `type_` (an SDK model, union or generic page) strictly."""
    parsed = TypeAdapter(type_).validate_python(data)
    _no_extras(parsed, getattr(type_, "__name__", "response"))
    return parsed
