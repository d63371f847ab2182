"""Two steps produce 'data'."""

from typing import Annotated

from stepflow import step


@step
def data() -> int:
    return 1


@step
def other() -> Annotated[int, "data"]:
    return 2
