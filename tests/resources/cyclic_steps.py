"""Three steps that feed each other in a circle."""

from stepflow import step


@step
def a(c: int) -> int:
    return c


@step
def b(a: int) -> int:
    return a


@step
def c(b: int) -> int:
    return b
