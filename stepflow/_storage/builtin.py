"""Registers the built-in serializers through the same hook plugins use."""

from __future__ import annotations

from stepflow._storage.serializers import Serializer, builtin_serializers
from stepflow.hookspecs import hookimpl


@hookimpl
def stepflow_serializer_types() -> list[Serializer]:
    return builtin_serializers()
