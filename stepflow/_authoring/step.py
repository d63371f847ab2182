"""The ``@step`` decorator and the frozen spec it attaches to a function.

A decorated step stays the very same function: calling it runs the body with no cache, store or
tracking. Everything stepflow needs is read once, at decoration time, from the signature and
type hints, and kept on ``func.spec``.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar, get_args, get_origin

import attrs

from stepflow._authoring.markers import REFERENCE_MARKERS, Dataset, Model, _ParamMarker
from stepflow._humanize import NOT_FINITE, parse_seconds
from stepflow._sentinels import MISSING
from stepflow.errors import StepDeclarationError

__all__ = ["Port", "Resources", "StepOptions", "StepRef", "StepSpec", "is_step", "step"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@attrs.frozen
class Port:
    """One input or output of a step."""

    #: the parameter or output name; edges join ports of equal names
    name: str
    #: the type, with ``Param``/``Annotated`` wrappers removed (``Any`` when unannotated)
    annotation: Any = Any
    #: the parameter's default value, or ``MISSING``
    default: Any = MISSING
    #: declared with ``Param[T]`` or ``Secret[T]``
    is_param: bool = False
    #: declared with ``Secret[T]``: the value is never displayed
    secret: bool = False
    #: a ``Dataset``/``Model`` reference marker, when there is one
    reference: Dataset | Model | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING


@attrs.frozen
class Resources:
    """What a step needs from its backend; backends decide how to honour it."""

    cpus: float | None = None
    memory: str | None = None
    gpus: int | None = None


@attrs.frozen
class StepOptions:
    """The options given to ``@step(...)``."""

    backend: str | None = None
    retries: int = 0
    #: seconds before the first retry; doubles on each further retry
    retry_delay: float = 0.5
    #: seconds, or ``None`` for no limit
    timeout: float | None = None
    cache: bool = True
    resources: Resources = Resources()
    env: Mapping[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()
    #: output name → data set it is registered as when the run succeeds (``register_as``)
    register_as: Mapping[str, str] = attrs.field(factory=dict)
    #: names of steps that must finish first, though no data passes (``StepSequence``)
    after: tuple[str, ...] = ()
    #: the input run item by item (fan-out): one task per item, the output a list
    foreach: str | None = None


@attrs.frozen
class StepRef:
    """Where a worker process finds the step: import ``module`` and look up ``qualname``."""

    module: str
    qualname: str
    #: the source file, used when ``module`` cannot be imported by name in the worker
    file: str | None = None


@attrs.frozen(eq=False)
class StepSpec:
    """Everything stepflow knows about a step; found on ``func.spec``."""

    name: str
    func: Callable[..., Any] = attrs.field(repr=False)
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    #: ``"single"``, ``"multiple"`` (a tuple of named outputs) or ``"none"``
    output_kind: str
    options: StepOptions
    ref: StepRef

    def input(self, name: str) -> Port:
        for port in self.inputs:
            if port.name == name:
                return port
        raise KeyError(name)


def is_step(obj: object) -> bool:
    """True when ``obj`` was decorated with ``@step``."""
    return isinstance(getattr(obj, "spec", None), StepSpec)


def step(
    func: F | None = None,
    *,
    name: str | None = None,
    backend: str | None = None,
    retries: int = 0,
    retry_delay: float | str | datetime.timedelta = 0.5,
    timeout: float | str | datetime.timedelta | None = None,
    cache: bool = True,
    resources: Resources | Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    tags: typing.Iterable[str] = (),
    register_as: str | Mapping[str, str] | None = None,
    after: typing.Iterable[Any] | Any = (),
    foreach: str | None = None,
) -> Any:
    """Declare a function as a pipeline step; use as ``@step`` or ``@step(...)``.

    The function's parameters are its inputs (outputs of other steps, pipeline parameters or
    registry references) and its return annotation names its outputs. The function is returned
    unchanged apart from a ``spec`` attribute, so it can still be called directly.

    :param name: the step's name (default: the function's name); also the default output name.
    :param backend: a named backend to run on (``[tool.stepflow.backends.NAME]``).
    :param retries: how many times to retry a failed attempt, with exponential backoff.
    :param retry_delay: the wait before the first retry (seconds, ``"2s"`` or a timedelta).
    :param timeout: stop the step after this long (seconds, ``"30m"`` or a timedelta).
    :param cache: ``False`` always reruns the step.
    :param resources: ``Resources(cpus=, memory=, gpus=)`` or a dict of those keys.
    :param env: the environment to run in, e.g. ``{"image": ..., "requirements": [...]}``.
    :param tags: free-form labels.
    :param register_as: register the output as a new version of this data set when the run
        succeeds (like ``-> Annotated[T, Dataset("name")]``); a dict maps output names to
        data-set names for a step with several outputs.
    :param after: steps (or step names) that must finish first although this step reads
        none of their outputs, like Azure ML's ``StepSequence``; this step is skipped when
        one of them fails.
    :param foreach: the name of an input, made by another step as a list (or other
        sequence), to run the step on item by item: inside the function the parameter is
        one item, each item is its own task (own cache key, retries, timeout and log), and
        the output is the list of the items' results, in item order.
    """
    if func is not None and not callable(func):
        # ``@step("load")`` passes the name where the function should be.
        raise StepDeclarationError(
            f"@step got {func!r} as its first argument; options are keywords only: "
            f"write @step(name={func!r}) instead"
        )
    options = _make_options(
        name=name,
        backend=backend,
        retries=retries,
        retry_delay=retry_delay,
        timeout=timeout,
        cache=cache,
        resources=resources,
        env=env,
        tags=tags,
        register_as=register_as,
        after=after,
        foreach=foreach,
    )

    def decorate(fn: F, localns: dict[str, Any] | None = None) -> F:
        if localns is None:
            # Called as ``@step(...)(fn)``: the defining scope is our caller's.
            localns = _caller_locals(2)
        fn.spec = _make_spec(fn, name, options, localns)  # type: ignore[attr-defined]
        return fn

    return decorate(func, _caller_locals(2)) if func is not None else decorate


def _caller_locals(depth: int) -> dict[str, Any]:
    """The local names where a step is defined, to resolve string annotations of steps
    defined inside functions (``from __future__ import annotations`` in a test, say)."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return {}
    return dict(frame.f_locals) if frame.f_code.co_name != "<module>" else {}


# --- options -------------------------------------------------------------------------------


def parse_duration(value: float | str | datetime.timedelta, what: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"1h30m"``, ``"1w"`` or a ``timedelta``.

    Strings are read by :func:`stepflow._humanize.parse_seconds`, the grammar ``--param``
    durations use too.
    """
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise StepDeclarationError(f"{what} must be a duration, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_seconds(value)
        except ValueError as exc:
            reason = (
                NOT_FINITE
                if str(exc) == NOT_FINITE
                else ("write seconds (90) or a string such as '90s', '30m', '1h30m'")
            )
            raise StepDeclarationError(f"{what}={value!r} is not a duration; {reason}") from None
    else:
        raise StepDeclarationError(f"{what} must be a duration, got {type(value).__name__}")
    if seconds < 0:
        raise StepDeclarationError(f"{what} must not be negative, got {value!r}")
    return seconds


def _make_options(
    *,
    name: str | None,
    backend: str | None,
    retries: int,
    retry_delay: float | str | datetime.timedelta,
    timeout: float | str | datetime.timedelta | None,
    cache: bool,
    resources: Resources | Mapping[str, Any] | None,
    env: Mapping[str, Any] | None,
    tags: typing.Iterable[str],
    register_as: str | Mapping[str, str] | None = None,
    after: typing.Iterable[Any] | Any = (),
    foreach: str | None = None,
) -> StepOptions:
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise StepDeclarationError(
            f"@step(name={name!r}): a step name must be a Python identifier such as 'load_data'"
        )
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise StepDeclarationError(f"@step(backend={backend!r}): give a backend name string")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise StepDeclarationError(f"@step(retries={retries!r}): give a whole number >= 0")
    if not isinstance(cache, bool):
        raise StepDeclarationError(f"@step(cache={cache!r}): give True or False")
    if resources is None:
        res = Resources()
    elif isinstance(resources, Resources):
        res = resources
    elif isinstance(resources, Mapping):
        unknown = set(resources) - {"cpus", "memory", "gpus"}
        if unknown:
            raise StepDeclarationError(
                f"@step(resources=...): unknown key(s) {sorted(unknown)}; use cpus, memory and gpus"
            )
        res = Resources(**resources)
    else:
        raise StepDeclarationError("@step(resources=...) takes Resources(...) or a dict")
    if isinstance(tags, str):
        tags = (tags,)
    if isinstance(register_as, str):
        # Which output it means is known once the signature is read (see _register_as).
        register_as = {"": register_as}
    elif register_as is not None and not (
        isinstance(register_as, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) and v for k, v in register_as.items())
    ):
        raise StepDeclarationError(
            f"@step(register_as={register_as!r}): give a data-set name, or a dict of output "
            f"name → data-set name"
        )
    return StepOptions(
        backend=backend,
        retries=retries,
        retry_delay=parse_duration(retry_delay, "retry_delay"),
        timeout=None if timeout is None else parse_duration(timeout, "timeout"),
        cache=cache,
        resources=res,
        env=dict(env or {}),
        tags=tuple(tags),
        register_as=dict(register_as or {}),
        after=_after_names(after),
        foreach=_foreach_name(foreach),
    )


def _after_names(after: typing.Iterable[Any] | Any) -> tuple[str, ...]:
    """``after=[load, "clean"]`` → ``("load", "clean")``: steps by function or by name."""
    if is_step(after) or isinstance(after, str):
        after = [after]
    if not isinstance(after, typing.Iterable):
        raise StepDeclarationError(
            f"@step(after={after!r}): give a list of steps, e.g. after=[prepare_folder]"
        )
    names: list[str] = []
    for item in after:
        if is_step(item):
            name = item.spec.name
        elif isinstance(item, str) and _NAME_RE.match(item):
            name = item
        elif callable(item):
            label = getattr(item, "__qualname__", repr(item))
            raise StepDeclarationError(
                f"@step(after=[...]): {label} is not a step; decorate it with @step, or "
                f"name the step as a string"
            )
        else:
            raise StepDeclarationError(
                f"@step(after=[...]): {item!r} is neither a step nor a step name; give the "
                f"step function itself or its name as a string"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _foreach_name(foreach: str | None) -> str | None:
    if foreach is None:
        return None
    if not isinstance(foreach, str) or not _NAME_RE.match(foreach):
        raise StepDeclarationError(
            f"@step(foreach={foreach!r}): give the name of the input to run item by item, "
            f"e.g. foreach='chunks'"
        )
    return foreach


# --- signature → ports ---------------------------------------------------------------------


def _make_spec(
    fn: Callable[..., Any], name: str | None, options: StepOptions, localns: dict[str, Any]
) -> StepSpec:
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise StepDeclarationError(
            f"@step decorates plain functions; got {type(fn).__name__} {fn!r}"
        )
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise StepDeclarationError(
            f"step {fn.__name__!r}: async and generator functions are not supported; "
            f"return the value instead"
        )
    step_name = name or fn.__name__
    hints = _type_hints(fn, localns)
    inputs = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise StepDeclarationError(
                f"step {step_name!r}: parameter {param.name!r} is "
                f"{param.kind.description}; every input needs a name, so use ordinary "
                f"parameters",
                step=step_name,
                parameter=param.name,
            )
        inputs.append(_input_port(step_name, param, hints.get(param.name, Any)))
    outputs, kind = _output_ports(step_name, hints.get("return", inspect.Signature.empty))
    if step_name in options.after:
        raise StepDeclarationError(
            f"step {step_name!r} lists itself in after=[...]; name the steps that must "
            f"finish before it",
            step=step_name,
        )
    if options.foreach is not None:
        outputs = _foreach_ports(step_name, options.foreach, inputs, outputs)
    if options.register_as:
        outputs, options = _register_as(step_name, outputs, options)
    ref = StepRef(
        module=fn.__module__,
        qualname=fn.__qualname__,
        file=getattr(sys.modules.get(fn.__module__), "__file__", None),
    )
    return StepSpec(
        name=step_name,
        func=fn,
        inputs=tuple(inputs),
        outputs=outputs,
        output_kind=kind,
        options=options,
        ref=ref,
    )


def _foreach_ports(
    step_name: str, foreach: str, inputs: list[Port], outputs: tuple[Port, ...]
) -> tuple[Port, ...]:
    """Check ``foreach`` names a plain input; each output becomes the list of item results."""
    names = [p.name for p in inputs]
    if foreach not in names:
        raise StepDeclarationError(
            f"step {step_name!r}: foreach={foreach!r} names no parameter of the function; "
            f"its parameters: {', '.join(names) or 'none'}. Name the input that holds the "
            f"items, e.g. def {step_name}(chunks: Item) with @step(foreach='chunks')",
            step=step_name,
            parameter=foreach,
        )
    port = inputs[names.index(foreach)]
    if port.is_param or port.reference is not None:
        what = "a Param" if port.is_param else f"a {type(port.reference).__name__} reference"
        raise StepDeclarationError(
            f"step {step_name!r}: foreach={foreach!r} names {what}; foreach runs over a "
            f"list made by another step, so name an input that a step produces",
            step=step_name,
            parameter=foreach,
        )
    return tuple(
        attrs.evolve(p, annotation=types.GenericAlias(list, (p.annotation,))) for p in outputs
    )


def _type_hints(fn: Callable[..., Any], localns: dict[str, Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, localns=localns or None, include_extras=True)
    except Exception:
        # An annotation that cannot be evaluated (a name imported only under TYPE_CHECKING)
        # must not make the step unusable: evaluate each one alone and keep the text of the
        # ones that fail; the type checker treats text as "cannot decide".
        hints: dict[str, Any] = {}
        globalns = getattr(fn, "__globals__", {})
        for key, value in inspect.get_annotations(fn).items():
            if isinstance(value, str):
                with contextlib.suppress(Exception):
                    value = eval(value, globalns, localns)  # noqa: S307 - the user's code
            hints[key] = value
        return hints


def _input_port(step_name: str, param: inspect.Parameter, hint: Any) -> Port:
    annotation, metadata = _strip_annotated(hint)
    is_param = secret = False
    reference: Dataset | Model | None = None
    for item in metadata:
        if isinstance(item, _ParamMarker):
            is_param, secret = True, item.secret
        elif isinstance(item, REFERENCE_MARKERS):
            reference = item
    default = MISSING if param.default is inspect.Parameter.empty else param.default
    if reference is not None and is_param:
        raise StepDeclarationError(
            f"step {step_name!r}: parameter {param.name!r} is both a Param and a "
            f"{type(reference).__name__} reference; keep one",
            step=step_name,
            parameter=param.name,
        )
    return Port(
        name=param.name,
        annotation=annotation,
        default=default,
        is_param=is_param,
        secret=secret,
        reference=reference,
    )


def _strip_annotated(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, a, b]`` → ``(T, (a, b))``; nested ``Annotated`` flattens."""
    metadata: tuple[Any, ...] = ()
    while get_origin(hint) is Annotated:
        hint, *extra = get_args(hint)
        metadata += tuple(extra)
    if hint is inspect.Parameter.empty:
        hint = Any
    return hint, metadata


def _output_name(metadata: tuple[Any, ...]) -> str | None:
    for item in metadata:
        if isinstance(item, str):
            return item
    return None


def _output_ports(step_name: str, hint: Any) -> tuple[tuple[Port, ...], str]:
    if hint is inspect.Signature.empty:
        return (Port(step_name, Any),), "single"
    if hint is None or hint is type(None):
        return (), "none"
    base, metadata = _strip_annotated(hint)
    name = _output_name(metadata)
    reference = _output_reference(step_name, metadata)
    if name is not None:
        _check_output_name(step_name, name)
        return (Port(name, base, reference=reference),), "single"
    if get_origin(base) is tuple and reference is None:
        elements = get_args(base)
        named = [_output_name(_strip_annotated(e)[1]) for e in elements]
        if any(n is not None for n in named):
            if Ellipsis in elements or any(n is None for n in named):
                raise StepDeclarationError(
                    f"step {step_name!r}: some elements of its tuple return annotation are "
                    f"named and some are not; name every one, e.g. "
                    f'-> tuple[Annotated[A, "a"], Annotated[B, "b"]]',
                    step=step_name,
                )
            ports = []
            for element, out_name in zip(elements, named, strict=True):
                assert out_name is not None
                _check_output_name(step_name, out_name)
                inner, inner_meta = _strip_annotated(element)
                ports.append(
                    Port(out_name, inner, reference=_output_reference(step_name, inner_meta))
                )
            _check_unique(step_name, [p.name for p in ports])
            return tuple(ports), "multiple"
    if (
        isinstance(base, type)
        and issubclass(base, tuple)
        and hasattr(base, "_fields")
        and reference is None
    ):
        # A NamedTuple return: each field is an output.
        field_types = typing.get_type_hints(base)
        ports = [Port(f, field_types.get(f, Any)) for f in base._fields]
        return tuple(ports), "multiple"
    return (Port(step_name, base, reference=reference),), "single"


def _output_reference(step_name: str, metadata: tuple[Any, ...]) -> Dataset | None:
    """A ``Dataset`` marker on an output: register the output as that data set."""
    for item in metadata:
        if isinstance(item, Model):
            raise StepDeclarationError(
                f"step {step_name!r}: an output cannot carry a Model marker; register the "
                f"model from the step with stepflow.models.register({item.name!r}, model)",
                step=step_name,
            )
        if isinstance(item, Dataset):
            if item.version is not None:
                raise StepDeclarationError(
                    f"step {step_name!r}: the output marker Dataset({item.name!r}, "
                    f"version={item.version!r}) registers a new version, so it takes no "
                    f"version; write Dataset({item.name!r})",
                    step=step_name,
                )
            return item
    return None


def _register_as(
    step_name: str, outputs: tuple[Port, ...], options: StepOptions
) -> tuple[tuple[Port, ...], StepOptions]:
    """Apply ``@step(register_as=...)`` to the output ports, as output markers would be."""
    wanted = dict(options.register_as)
    if "" in wanted:
        if len(outputs) != 1:
            raise StepDeclarationError(
                f"step {step_name!r} has {len(outputs)} outputs, so register_as needs a dict "
                f"of output name → data-set name, e.g. register_as={{'scores': 'scores'}}",
                step=step_name,
            )
        wanted = {outputs[0].name: wanted[""]}
    names = [p.name for p in outputs]
    unknown = [o for o in wanted if o not in names]
    if unknown:
        raise StepDeclarationError(
            f"step {step_name!r}: register_as names output {unknown[0]!r}, which it does not "
            f"produce; its outputs: {', '.join(names) or 'none'}",
            step=step_name,
        )
    ports = []
    for port in outputs:
        if port.name in wanted:
            marker = Dataset(wanted[port.name])
            if port.reference is not None and port.reference != marker:
                raise StepDeclarationError(
                    f"step {step_name!r}: output {port.name!r} is marked "
                    f"Dataset({port.reference.name!r}) and register_as says "
                    f"{wanted[port.name]!r}; keep one",
                    step=step_name,
                )
            port = attrs.evolve(port, reference=marker)
        ports.append(port)
    return tuple(ports), attrs.evolve(options, register_as=wanted)


def _check_output_name(step_name: str, name: str) -> None:
    if not _NAME_RE.match(name):
        raise StepDeclarationError(
            f"step {step_name!r}: output name {name!r} is not a Python identifier; consumers "
            f"name it as a parameter, so use something like 'clean_data'",
            step=step_name,
        )


def _check_unique(step_name: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise StepDeclarationError(
                f"step {step_name!r} declares output {n!r} twice; give each output its own name",
                step=step_name,
            )
        seen.add(n)
