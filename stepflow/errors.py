"""Every exception and warning stepflow raises.

Our exception hierarchy::

    StepflowError
    ├── PipelineDefinitionError          the pipeline is wrong; raised when it is built
    │   ├── NotAStepError                an object in the step list is not decorated with @step
    │   ├── StepDeclarationError         @step itself was misused or the signature is unusable
    │   ├── CycleError                   the inferred graph has a cycle (.path holds it)
    │   ├── DuplicateOutputError         two steps produce the same name
    │   ├── MissingInputError            a parameter matches nothing (.suggestions)
    │   ├── TypeMismatchError            a consumer does not accept its producer's type
    │   └── ParameterParseError          a parameter value cannot be parsed (also a ValueError)
    ├── UsageError                       a bad call: unknown target, unknown parameter, bad flag
    │   ├── TargetNotFoundError          `stepflow run TARGET` names nothing loadable
    │   ├── StoreUnavailableError        the configured datastore cannot be opened or reached
    │   ├── UnsafeHomeError              the home is writable or owned by someone else
    │   └── NotRegisteredError           no such data set, model, version or alias (a LookupError)
    ├── PluginError                      a plugin cannot be loaded or registers something bad
    ├── BackendError                     a backend cannot run a task (not the step's own error)
    │   └── BackendUnavailableError      checked before any step runs
    ├── StepFailedError                  a step raised; carries the cut traceback
    │   └── StepTimeoutError             a step ran past its timeout and was stopped
    └── StepOutputError                  a step returned something that does not fit its outputs

    StepflowWarning(UserWarning)

Each message names what is wrong, where (step, parameter, plugin) and how to fix it, and the
pieces are kept on attributes so callers need not parse text.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CycleError",
    "DuplicateOutputError",
    "MissingInputError",
    "NotAStepError",
    "NotRegisteredError",
    "ParameterParseError",
    "PipelineDefinitionError",
    "PluginError",
    "StepDeclarationError",
    "StepFailedError",
    "StepOutputError",
    "StepTimeoutError",
    "StepflowError",
    "StepflowWarning",
    "StoreUnavailableError",
    "TargetNotFoundError",
    "TypeMismatchError",
    "UnsafeHomeError",
    "UsageError",
]


class StepflowError(Exception):
    """Root of every error stepflow raises on purpose."""


class PipelineDefinitionError(StepflowError):
    """The pipeline is wrong; raised when it is built, before anything runs.

    :ivar step: the name of the step at fault, when there is one.
    :ivar parameter: the parameter at fault, when there is one.
    """

    def __init__(
        self, message: str, *, step: str | None = None, parameter: str | None = None
    ) -> None:
        super().__init__(message)
        self.step = step
        self.parameter = parameter


class NotAStepError(PipelineDefinitionError, TypeError):
    """An object given as a step was not decorated with ``@step``."""


class StepDeclarationError(PipelineDefinitionError, TypeError):
    """``@step`` was misused, or the function's signature cannot be turned into ports."""


class CycleError(PipelineDefinitionError):
    """The inferred graph has a cycle; ``.path`` lists the steps around it."""

    def __init__(self, message: str, *, path: Sequence[str]) -> None:
        super().__init__(message, step=path[0] if path else None)
        self.path = list(path)


class DuplicateOutputError(PipelineDefinitionError):
    """Two steps produce an output of the same name; ``.producers`` names them."""

    def __init__(self, message: str, *, output: str, producers: Sequence[str]) -> None:
        super().__init__(message, step=producers[-1] if producers else None)
        self.output = output
        self.producers = list(producers)


class MissingInputError(PipelineDefinitionError):
    """A step parameter matches no output, has no default and carries no reference marker.

    :ivar suggestions: output names close to the parameter's name ("did you mean").
    :ivar fitting_outputs: output names whose producer's declared type fits the parameter's
        annotation, in pipeline order (suggestions too: stepflow never wires by type).
    """

    def __init__(
        self,
        message: str,
        *,
        step: str,
        parameter: str,
        suggestions: Sequence[str] = (),
        fitting_outputs: Sequence[str] = (),
    ) -> None:
        super().__init__(message, step=step, parameter=parameter)
        self.suggestions = list(suggestions)
        self.fitting_outputs = list(fitting_outputs)


class TypeMismatchError(PipelineDefinitionError):
    """A consumer's annotation does not accept the type its producer declares."""

    def __init__(
        self,
        message: str,
        *,
        step: str,
        parameter: str,
        producer: str,
        expected: object,
        provided: object,
    ) -> None:
        super().__init__(message, step=step, parameter=parameter)
        self.producer = producer
        self.expected = expected
        self.provided = provided


class ParameterParseError(PipelineDefinitionError, ValueError):
    """A pipeline parameter's value cannot be parsed or does not fit its annotation."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        value: object = None,
        annotation: object = None,
        step: str | None = None,
    ) -> None:
        super().__init__(message, step=step, parameter=parameter)
        self.value = value
        self.annotation = annotation


class UsageError(StepflowError):
    """The caller asked for something that does not exist or cannot be combined."""


class TargetNotFoundError(UsageError):
    """``stepflow run TARGET`` (or ``show``) names nothing that can be loaded."""


class StoreUnavailableError(UsageError):
    """The configured datastore cannot be used: a missing bucket, rejected credentials, an
    endpoint that does not answer. The message names the store URL and the fix.

    :ivar store: the store's URL.
    """

    def __init__(self, message: str, *, store: str) -> None:
        super().__init__(message)
        self.store = store


class UnsafeHomeError(UsageError):
    """The stepflow home could be changed by another user: it is world-writable, owned by
    another user, or reached through a symlink another user owns. Stored results are
    unpickled, so such a home is refused instead of used; the message names the path and the
    fix (``[tool.stepflow] shared_home = true`` for a team folder).

    :ivar path: the folder or symlink at fault.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class NotRegisteredError(UsageError, LookupError):
    """A data set or model, or one of its versions or aliases, is not in the registry.

    :ivar kind: ``"data set"`` or ``"model"``.
    :ivar name: the name asked for.
    :ivar available: what does exist (names, versions or aliases), for the message.
    """

    def __init__(self, message: str, *, kind: str, name: str, available: Sequence[str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.available = list(available)


class PluginError(StepflowError):
    """A plugin cannot be loaded, or registered something of the wrong kind.

    :ivar plugin: the plugin's name, when known.
    """

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class BackendError(StepflowError):
    """A backend could not run a task; the step itself did not get to fail."""


class BackendUnavailableError(BackendError):
    """A backend the pipeline needs cannot be used; raised before any step runs."""


class StepFailedError(StepflowError):
    """A step raised an exception.

    :ivar step: the step's name.
    :ivar exc_type: the qualified name of the exception class the step raised.
    :ivar traceback: the traceback text, cut to the user's frames.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str,
        exc_type: str = "",
        traceback: str = "",
        full_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.step = step
        self.exc_type = exc_type
        self.traceback = traceback
        #: the traceback with stepflow's own frames kept (``--full-trace``)
        self.full_traceback = full_traceback or traceback


class StepTimeoutError(StepFailedError):
    """A step ran past its ``timeout`` and its process was stopped."""


class StepOutputError(StepflowError, TypeError):
    """A step returned a value that does not match the outputs it declares."""

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step


class StepflowWarning(UserWarning):
    """Base of every warning stepflow issues."""


for _name in __all__:
    globals()[_name].__module__ = "stepflow.errors"
del _name
