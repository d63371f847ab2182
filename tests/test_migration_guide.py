"""The Azure ML SDK v1 migration guide covers every concept DESIGN.md section 11 lists.

(``tests/test_docs.py`` runs its stepflow blocks; this checks that none of the concepts a
migrating user looks for is missing, as a heading or in the map.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).parents[1] / "docs" / "how-to" / "migrate-from-azureml-v1.md"

#: DESIGN.md section 11, "From Azure ML SDK v1", in its order
CONCEPTS = [
    "Workspace",
    "Datastore",
    "Dataset",
    "File",
    "Tabular",
    "OutputFileDatasetConfig",
    "register_on_complete",
    "PipelineData",
    "ComputeTarget",
    "AmlCompute",
    "RunConfiguration",
    "Environment",
    "PythonScriptStep",
    "allow_reuse",
    "regenerate_outputs",
    "source_directory",
    ".amlignore",
    "PipelineParameter",
    "StepSequence",
    "ParallelRunStep",
    "Experiment",
    "Run",
    "run.log",
    "continue_on_step_failure",
    "Pipeline.validate",
    "PublishedPipeline",
    "PipelineEndpoint",
    "Schedule",
    "ScheduleRecurrence",
    "Datastore-change schedules",
    "Model.register",
    "Model.download",
]


def _headings() -> str:
    return "\n".join(re.findall(r"^## (.+)$", GUIDE.read_text(), flags=re.M))


@pytest.mark.parametrize("concept", CONCEPTS)
def test_every_concept_has_a_section(concept):
    """Each concept is named in a section heading, so a reader finds it in the contents."""
    assert concept in _headings(), f"no section of {GUIDE.name} is about {concept!r}"


_BLOCK = re.compile(r"(<!-- skip -->\s*)?```(\w+)\n(.*?)```", flags=re.S)


def test_every_section_shows_both_sides():
    """Each concept section holds SDK v1 code (marked not to run: it needs a workspace) and
    stepflow code, a command or configuration."""
    sections = re.split(r"^## ", GUIDE.read_text(), flags=re.M)[1:]
    prose_only = ("The map", "Keep your MLflow UI", "What stepflow does differently")
    for section in sections:
        title = section.splitlines()[0]
        if title.startswith(prose_only):
            continue
        blocks = [(bool(skip), lang, text) for skip, lang, text in _BLOCK.findall(section)]
        azure = [b for b in blocks if "azureml" in b[2]]
        ours = [b for b in blocks if "azureml" not in b[2]]
        assert azure and all(skip for skip, _, _ in azure), f"{title}: SDK v1 code, not run"
        assert ours, f"{title}: no stepflow code beside the SDK v1 code"
