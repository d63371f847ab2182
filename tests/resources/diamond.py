"""A diamond: source -> (left, right) -> joined, plus parameters."""

from typing import Annotated

from stepflow import Param, Pipeline, step


@step
def source(n: int = 4) -> list[int]:
    return list(range(n))


@step
def left(source: list[int], scale: float = 2.0) -> list[float]:
    return [x * scale for x in source]


@step
def right(source: list[int]) -> tuple[Annotated[int, "lo"], Annotated[int, "hi"]]:
    return min(source), max(source)


@step
def joined(left: list[float], lo: int, hi: int, label: Param[str] = "sum") -> str:
    return f"{label}={sum(left)} [{lo},{hi}]"


diamond = Pipeline("diamond", [source, left, right, joined])
