"""A consumer whose annotation rejects its producer's type."""

import pandas as pd

from stepflow import step


@step
def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": [1]})


@step
def total(frame: int) -> int:
    return frame
