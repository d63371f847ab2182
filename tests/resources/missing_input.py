"""A step reads a name nothing produces (a typo of 'houses')."""

from stepflow import step


@step
def houses() -> list[int]:
    return [1, 2]


@step
def count(housse: list[int]) -> int:
    return len(housse)
