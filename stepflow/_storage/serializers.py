"""Serializers turn step outputs into bytes for the datastore and back.

Built-in: ``cloudpickle`` for everything. Serializers are plugins: ``stepflow_serializer_types``
returns instances, and the first whose ``can_dump`` accepts a value is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CloudpickleSerializer", "Serializer"]


class Serializer:
    """Base class: subclasses set ``name`` and implement the three methods."""

    #: the name recorded with each artifact, so a load finds the same serializer
    name: str = ""
    #: bump when the byte format changes; part of the environment a result depends on
    version: str = "1"

    def can_dump(self, value: Any) -> bool:
        raise NotImplementedError

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError


class CloudpickleSerializer(Serializer):
    """Any picklable object, through cloudpickle (the fallback)."""

    name = "cloudpickle"

    def can_dump(self, value: Any) -> bool:
        return True

    def dumps(self, value: Any) -> bytes:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)  # noqa: S301 - only bytes whose hash matched the store key
