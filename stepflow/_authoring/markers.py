"""Annotation markers: ``Param[T]``, ``Secret[T]`` and the registry references.

Markers ride inside ``typing.Annotated`` so that a parameter keeps its real type for the type
checker and for stepflow's own build-time checks.
"""

from __future__ import annotations

from typing import Annotated, Any

import attrs

__all__ = ["Dataset", "Model", "Param", "Secret"]


@attrs.frozen
class _ParamMarker:
    """Marks an ``Annotated`` parameter as a pipeline parameter."""

    #: values of secret parameters are never shown (reports, records, errors)
    secret: bool = False


PARAM_MARKER = _ParamMarker()
SECRET_MARKER = _ParamMarker(secret=True)


class Param:
    """``Param[T]`` declares a pipeline parameter of type ``T``.

    A parameter with a default value is a pipeline parameter already; ``Param`` makes the
    intent explicit and allows a parameter that must be given at run time (no default)::

        @step
        def houses(csv_path: Param[str]) -> pd.DataFrame: ...
    """

    def __class_getitem__(cls, tp: Any) -> Any:
        return Annotated[tp, PARAM_MARKER]

    def __init__(self) -> None:
        raise TypeError("Param is used as an annotation, Param[T]; it is never instantiated")


class Secret:
    """``Secret[T]`` declares a pipeline parameter whose value is never displayed."""

    def __class_getitem__(cls, tp: Any) -> Any:
        return Annotated[tp, SECRET_MARKER]

    def __init__(self) -> None:
        raise TypeError("Secret is used as an annotation, Secret[T]; it is never instantiated")


def _check_name(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{type(instance).__name__}() needs a non-empty name, got {value!r}")


@attrs.frozen
class Dataset:
    """Reference to a registered data set: ``Annotated[pd.DataFrame, Dataset("houses")]``.

    ``version=None`` means the latest version.
    """

    name: str = attrs.field(validator=_check_name)
    version: int | None = None


@attrs.frozen
class Model:
    """Reference to a registered model: ``Annotated[Regressor, Model("HousePrices")]``.

    Give a ``version`` or an ``alias`` (such as ``"production"``); neither means the latest.
    """

    name: str = attrs.field(validator=_check_name)
    version: int | None = None
    alias: str | None = None


REFERENCE_MARKERS = (Dataset, Model)
