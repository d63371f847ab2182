"""The plugin's warning (its own module: importing it must not import the mirror)."""

from __future__ import annotations

from stepflow.errors import StepflowWarning

__all__ = ["MlflowTrackingWarning"]


class MlflowTrackingWarning(StepflowWarning):
    """Mirroring a run to MLflow failed; the run itself went on."""
