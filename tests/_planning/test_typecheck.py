"""Tests for stepflow._planning.typecheck: build-time type compatibility and type names."""

from __future__ import annotations

import collections.abc as abc
import enum
import inspect
import subprocess
import sys
import types
import typing
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    NamedTuple,
    NewType,
    NoReturn,
    Optional,
    Protocol,
    TypeVar,
    Union,
    runtime_checkable,
)

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from stepflow._planning import typecheck
from stepflow._planning.typecheck import is_compatible, type_repr

T = TypeVar("T")
T_int = TypeVar("T_int", bound=int)
T_str_bytes = TypeVar("T_str_bytes", str, bytes)

UserId = NewType("UserId", int)
AdminId = NewType("AdminId", UserId)


class Animal:
    """A plain base class."""


class Dog(Animal):
    """A plain subclass."""


class MyFrame(pd.DataFrame):
    """A user's DataFrame subclass."""


class Box(Generic[T]):
    """A user-defined generic class."""


class IntBox(Box[int]):
    """A user generic specialised by subclassing."""


class Point(NamedTuple):
    """A typed NamedTuple, which is a tuple[int, int]."""

    x: int
    y: int


class Shade(enum.Enum):
    """An enum whose members appear in Literal types."""

    LIGHT = 1
    DARK = 2


class Drawable(Protocol):
    """A structural protocol that is not runtime_checkable."""

    def draw(self) -> None: ...


@runtime_checkable
class Closeable(Protocol):
    """A runtime_checkable protocol with a method only."""

    def close(self) -> None: ...


@runtime_checkable
class Named(Protocol):
    """A runtime_checkable protocol with a data member: issubclass refuses it."""

    name: str


class File:
    """Has close(), so it satisfies Closeable."""

    def close(self) -> None:
        """Close nothing."""


class Stone:
    """Has no close(), so it does not satisfy Closeable."""


class Hook:
    """Instances are callable."""

    def __call__(self) -> None:
        """Do nothing."""


class TestUnannotated:
    """Any, object and inspect's "empty" accept or provide anything."""

    @pytest.mark.parametrize("tp", [int, str, list[int], pd.DataFrame, int | None, None])
    def test_any_expected_accepts_everything(self, tp: object) -> None:
        """Any as the expected type accepts every provided type."""
        assert is_compatible(tp, Any) is True

    @pytest.mark.parametrize("tp", [int, str, list[int], pd.DataFrame, Literal["a"]])
    def test_any_provided_fits_everything(self, tp: object) -> None:
        """Any as the provided type is accepted by every expected type."""
        assert is_compatible(Any, tp) is True

    @pytest.mark.parametrize("tp", [int, None, list[str], pd.DataFrame, int | str])
    def test_object_expected_accepts_everything(self, tp: object) -> None:
        """object as the expected type accepts every provided type."""
        assert is_compatible(tp, object) is True

    def test_object_provided_is_not_a_specific_class(self) -> None:
        """object provided where int is expected is a mismatch."""
        assert is_compatible(object, int) is False

    def test_parameter_empty_is_any(self) -> None:
        """inspect.Parameter.empty and Signature.empty mean unannotated, on either side."""
        assert is_compatible(inspect.Parameter.empty, int) is True
        assert is_compatible(str, inspect.Parameter.empty) is True
        assert is_compatible(inspect.Signature.empty, pd.DataFrame) is True


class TestAnnotated:
    """Annotated metadata is stripped on both sides."""

    def test_annotated_stripped_for_accept(self) -> None:
        """Annotated[int, ...] is int, accepted by Annotated[float, ...]."""
        assert is_compatible(Annotated[int, "a"], Annotated[float, "b"]) is True

    def test_annotated_stripped_for_reject(self) -> None:
        """Annotated[str, ...] is still rejected where int is expected."""
        assert is_compatible(Annotated[str, "name"], int) is False
        assert is_compatible(str, Annotated[int, object()]) is False

    def test_annotated_inside_generics(self) -> None:
        """Annotated arguments of a generic are stripped too."""
        assert is_compatible(list[Annotated[int, "x"]], list[int]) is True
        assert is_compatible(list[Annotated[str, "x"]], list[int]) is False


class TestNone:
    """None and type(None) are the same annotation."""

    @pytest.mark.parametrize("provided", [None, type(None)])
    @pytest.mark.parametrize("expected", [None, type(None)])
    def test_none_for_none(self, provided: object, expected: object) -> None:
        """None provided for None expected, in either spelling, is accepted."""
        assert is_compatible(provided, expected) is True

    def test_none_is_not_int(self) -> None:
        """None is neither provided for nor accepted by int."""
        assert is_compatible(None, int) is False
        assert is_compatible(int, None) is False


class TestPlainClasses:
    """Plain classes compare with issubclass."""

    def test_same_class(self) -> None:
        """A class is compatible with itself."""
        assert is_compatible(str, str) is True

    def test_unrelated_builtins_rejected(self) -> None:
        """str is not accepted where int is expected, nor the reverse."""
        assert is_compatible(str, int) is False
        assert is_compatible(int, str) is False

    def test_subclass_accepted(self) -> None:
        """A subclass is accepted where its base class is expected."""
        assert is_compatible(Dog, Animal) is True

    def test_base_class_rejected_for_subclass(self) -> None:
        """A base class is not accepted where a subclass is expected."""
        assert is_compatible(Animal, Dog) is False

    def test_dataframe_subclass_accepted(self) -> None:
        """A DataFrame subclass is accepted where pd.DataFrame is expected."""
        assert is_compatible(MyFrame, pd.DataFrame) is True

    def test_dataframe_rejected_for_ndarray(self) -> None:
        """A DataFrame is not accepted where an np.ndarray is expected."""
        assert is_compatible(pd.DataFrame, np.ndarray) is False
        assert is_compatible(np.ndarray, pd.DataFrame) is False

    def test_series_rejected_for_dataframe(self) -> None:
        """A Series is not a DataFrame."""
        assert is_compatible(pd.Series, pd.DataFrame) is False

    def test_abc_registration_respected(self) -> None:
        """ABCs accept their registered and structural subclasses."""
        assert is_compatible(int, abc.Hashable) is True
        assert is_compatible(list, abc.Hashable) is False


class TestNumericTower:
    """PEP 484's promotions: int to float and complex, float to complex."""

    def test_int_for_float(self) -> None:
        """int is accepted where float is expected."""
        assert is_compatible(int, float) is True

    def test_int_and_float_for_complex(self) -> None:
        """int and float are accepted where complex is expected."""
        assert is_compatible(int, complex) is True
        assert is_compatible(float, complex) is True

    def test_bool_promotes_like_int(self) -> None:
        """bool, a subclass of int, is accepted for int, float and complex."""
        assert is_compatible(bool, int) is True
        assert is_compatible(bool, float) is True
        assert is_compatible(bool, complex) is True

    def test_no_demotion(self) -> None:
        """float is not accepted for int, complex not for float, int not for bool."""
        assert is_compatible(float, int) is False
        assert is_compatible(complex, float) is False
        assert is_compatible(int, bool) is False

    def test_promotion_inside_generics(self) -> None:
        """list[int] is accepted where list[float] is expected."""
        assert is_compatible(list[int], list[float]) is True
        assert is_compatible(list[float], list[int]) is False


class TestUnions:
    """Expected unions need one member; provided unions need every member."""

    def test_member_accepted_by_union(self) -> None:
        """int is accepted where int | None is expected."""
        assert is_compatible(int, int | None) is True

    def test_union_rejected_by_member(self) -> None:
        """int | None is not accepted where int is expected."""
        assert is_compatible(int | None, int) is False

    def test_union_accepted_by_wider_union(self) -> None:
        """int | None is accepted by int | str | None and by itself."""
        assert is_compatible(int | None, int | str | None) is True
        assert is_compatible(int | None, int | None) is True

    def test_union_rejected_by_narrower_union(self) -> None:
        """int | str is not accepted by int | None."""
        assert is_compatible(int | str, int | None) is False

    def test_spellings_are_equivalent(self) -> None:
        """typing.Union, Optional and PEP 604 unions mean the same."""
        assert is_compatible(Optional[int], int | None) is True  # noqa: UP045
        assert is_compatible(Union[int, str], str | int) is True  # noqa: UP007
        assert is_compatible(None, Optional[str]) is True  # noqa: UP045

    def test_union_members_use_numeric_tower(self) -> None:
        """int | float is accepted where float is expected."""
        assert is_compatible(int | float, float) is True

    def test_subclass_member(self) -> None:
        """A subclass is accepted by a union holding its base class."""
        assert is_compatible(MyFrame, pd.DataFrame | None) is True
        assert is_compatible(pd.DataFrame, np.ndarray | None) is False


class TestProtocols:
    """Runtime-checkable protocols use issubclass; others cannot be decided."""

    def test_non_runtime_protocol_is_lenient(self) -> None:
        """A protocol that is not runtime_checkable accepts anything."""
        assert is_compatible(int, Drawable) is True

    def test_runtime_protocol_accepts_structural_match(self) -> None:
        """A class with close() is accepted by Closeable."""
        assert is_compatible(File, Closeable) is True

    def test_runtime_protocol_rejects_missing_method(self) -> None:
        """A class without close() is rejected by Closeable."""
        assert is_compatible(Stone, Closeable) is False

    def test_protocol_with_data_member_is_lenient(self) -> None:
        """issubclass refuses protocols with data members, so the check is lenient."""
        assert is_compatible(Stone, Named) is True

    def test_builtin_runtime_protocols(self) -> None:
        """typing.SupportsFloat accepts int and rejects str."""
        assert is_compatible(int, typing.SupportsFloat) is True
        assert is_compatible(str, typing.SupportsFloat) is False


class TestGenerics:
    """Generic origins compare with issubclass, arguments covariantly."""

    def test_same_generic(self) -> None:
        """list[int] is compatible with list[int]."""
        assert is_compatible(list[int], list[int]) is True

    def test_argument_mismatch_rejected(self) -> None:
        """list[str] is not accepted where list[int] is expected."""
        assert is_compatible(list[str], list[int]) is False

    def test_typing_aliases_match_builtins(self) -> None:
        """typing.List[int] and list[int] are interchangeable."""
        assert is_compatible(typing.List[int], list[int]) is True  # noqa: UP006
        assert is_compatible(list[int], typing.List[int]) is True  # noqa: UP006
        assert is_compatible(typing.Dict[str, int], dict[str, str]) is False  # noqa: UP006

    def test_abstract_collections_accept_concrete(self) -> None:
        """list[int] is accepted by Sequence[int], Iterable[int], Collection and bare list."""
        assert is_compatible(list[int], abc.Sequence[int]) is True
        assert is_compatible(list[int], abc.Iterable[int]) is True
        assert is_compatible(list[int], abc.Collection) is True
        assert is_compatible(list[int], list) is True
        assert is_compatible(list[int], typing.Sequence[int]) is True

    def test_abstract_not_accepted_for_concrete(self) -> None:
        """Sequence[int] is not accepted where list[int] is expected."""
        assert is_compatible(abc.Sequence[int], list[int]) is False

    def test_wrong_origin_rejected(self) -> None:
        """list[int] is not a set[int], nor a Mapping."""
        assert is_compatible(list[int], set[int]) is False
        assert is_compatible(list[int], abc.Mapping[int, int]) is False

    def test_bare_provided_is_lenient(self) -> None:
        """A bare list is accepted where list[int] is expected."""
        assert is_compatible(list, list[int]) is True
        assert is_compatible(typing.List, list[int]) is True  # noqa: UP006

    def test_dict_arguments_pairwise(self) -> None:
        """dict arguments compare pairwise and covariantly."""
        assert is_compatible(dict[str, int], dict[str, float]) is True
        assert is_compatible(dict[str, float], dict[str, int]) is False
        assert is_compatible(dict[str, int], abc.Mapping[str, float]) is True
        assert is_compatible(dict[int, float], abc.Mapping[str, float]) is False

    def test_mapping_iterates_keys(self) -> None:
        """dict[str, int] as an Iterable yields its str keys."""
        assert is_compatible(dict[str, int], abc.Iterable[str]) is True
        assert is_compatible(dict[str, int], abc.Iterable[int]) is False

    def test_nested_generics(self) -> None:
        """Arguments are compared recursively."""
        assert is_compatible(list[dict[str, MyFrame]], abc.Sequence[dict[str, pd.DataFrame]])
        assert not is_compatible(list[dict[str, pd.Series]], list[dict[str, pd.DataFrame]])

    def test_type_objects(self) -> None:
        """type[Dog] is accepted by type[Animal]; type[str] not by type[int]."""
        assert is_compatible(type[Dog], type[Animal]) is True
        assert is_compatible(type[str], type[int]) is False

    def test_user_generic(self) -> None:
        """User generics compare their arguments like builtins do."""
        assert is_compatible(Box[int], Box[float]) is True
        assert is_compatible(Box[str], Box[int]) is False

    def test_user_generic_specialised_by_subclass_is_lenient(self) -> None:
        """A subclass fixing the argument (IntBox) is not resolved, so it is accepted."""
        assert is_compatible(IntBox, Box[str]) is True

    def test_numpy_typed_arrays(self) -> None:
        """NDArray dtypes are compared through their dtype arguments."""
        assert is_compatible(npt.NDArray[np.float64], npt.NDArray[np.floating]) is True
        assert is_compatible(npt.NDArray[np.float64], npt.NDArray[np.int64]) is False
        assert is_compatible(npt.NDArray[np.float64], np.ndarray) is True
        assert is_compatible(np.ndarray, npt.NDArray[np.float64]) is True


class TestTuples:
    """Fixed and variadic tuples."""

    def test_fixed_tuples_pairwise(self) -> None:
        """tuple[int, str] fits tuple[float, str] but not tuple[str, int]."""
        assert is_compatible(tuple[int, str], tuple[float, str]) is True
        assert is_compatible(tuple[int, str], tuple[str, int]) is False

    def test_fixed_tuples_length_mismatch(self) -> None:
        """Fixed tuples of different lengths are rejected."""
        assert is_compatible(tuple[int, int], tuple[int, int, int]) is False

    def test_fixed_for_variadic(self) -> None:
        """tuple[int, bool] fits tuple[int, ...]; tuple[int, str] does not."""
        assert is_compatible(tuple[int, bool], tuple[int, ...]) is True
        assert is_compatible(tuple[int, str], tuple[int, ...]) is False

    def test_variadic_for_variadic(self) -> None:
        """tuple[int, ...] fits tuple[float, ...] but not tuple[str, ...]."""
        assert is_compatible(tuple[int, ...], tuple[float, ...]) is True
        assert is_compatible(tuple[int, ...], tuple[str, ...]) is False

    def test_variadic_for_fixed_checks_elements_only(self) -> None:
        """tuple[int, ...] fits tuple[int, int] (length unknown), not tuple[int, str]."""
        assert is_compatible(tuple[int, ...], tuple[int, int]) is True
        assert is_compatible(tuple[int, ...], tuple[int, str]) is False

    def test_tuple_as_sequence(self) -> None:
        """A tuple is a Sequence of its element types."""
        assert is_compatible(tuple[int, bool], abc.Sequence[int]) is True
        assert is_compatible(tuple[int, str], abc.Sequence[int]) is False
        assert is_compatible(tuple[int, ...], abc.Iterable[float]) is True

    def test_typing_tuple_alias(self) -> None:
        """typing.Tuple behaves like tuple."""
        assert is_compatible(typing.Tuple[int, str], tuple[int, str]) is True  # noqa: UP006

    def test_list_is_not_tuple(self) -> None:
        """list[int] is not accepted where tuple[int, ...] is expected."""
        assert is_compatible(list[int], tuple[int, ...]) is False

    def test_namedtuple_as_tuple(self) -> None:
        """A typed NamedTuple is a tuple of its field types."""
        assert is_compatible(Point, tuple[int, int]) is True
        assert is_compatible(Point, tuple[float, ...]) is True
        assert is_compatible(Point, tuple[str, str]) is False
        assert is_compatible(Point, abc.Sequence[int]) is True


class TestCallables:
    """Callables compare by origin only."""

    def test_callable_signatures_not_compared(self) -> None:
        """Callable[[int], str] is accepted by Callable[[str], int]."""
        assert is_compatible(typing.Callable[[int], str], typing.Callable[[str], int]) is True

    def test_callable_against_abc(self) -> None:
        """typing and collections.abc Callables are interchangeable."""
        assert is_compatible(abc.Callable[..., int], typing.Callable) is True

    def test_functions_are_callable(self) -> None:
        """Functions and instances of classes with __call__ are callable; others are not."""
        assert is_compatible(types.FunctionType, abc.Callable[[int], int]) is True
        assert is_compatible(File, abc.Callable[[], None]) is False
        assert is_compatible(Hook, abc.Callable[[], None]) is True
        assert is_compatible(str, typing.Callable) is False

    def test_callable_is_not_data(self) -> None:
        """A Callable is not accepted where a DataFrame is expected."""
        assert is_compatible(abc.Callable[[], int], pd.DataFrame) is False


class TestLiterals:
    """Literal values against literals and classes."""

    def test_subset_accepted(self) -> None:
        """Literal['a', 'b'] fits Literal['a', 'b', 'c']."""
        assert is_compatible(Literal["a", "b"], Literal["a", "b", "c"]) is True

    def test_superset_rejected(self) -> None:
        """Literal['a', 'd'] does not fit Literal['a', 'b']."""
        assert is_compatible(Literal["a", "d"], Literal["a", "b"]) is False

    def test_values_compared_with_type(self) -> None:
        """Literal[True] is not Literal[1] even though True == 1."""
        assert is_compatible(Literal[True], Literal[1]) is False

    def test_literal_for_class(self) -> None:
        """A literal fits a class when every value is an instance of it."""
        assert is_compatible(Literal["a", "b"], str) is True
        assert is_compatible(Literal[1, "a"], str) is False
        assert is_compatible(Literal[1], float) is True
        assert is_compatible(Literal[None], int | None) is True

    def test_class_for_literal_is_lenient(self) -> None:
        """str fits Literal['a'] (values decided at run time); int does not."""
        assert is_compatible(str, Literal["a", "b"]) is True
        assert is_compatible(int, Literal["a", "b"]) is False

    def test_literal_against_union_of_literals(self) -> None:
        """Literal[1, 2] fits Literal[1] | Literal[2]."""
        assert is_compatible(Literal[1, 2], Literal[1] | Literal[2]) is True
        assert is_compatible(Literal[1, 3], Literal[1] | Literal[2]) is False

    def test_enum_literals(self) -> None:
        """Enum members in literals are compared as values and typed by their enum."""
        assert is_compatible(Literal[Shade.LIGHT], Shade) is True
        assert is_compatible(Literal[Shade.LIGHT], Literal[Shade.LIGHT, Shade.DARK]) is True
        assert is_compatible(Literal[Shade.DARK], Literal[Shade.LIGHT]) is False


class TestTypeVars:
    """TypeVars stand for their bound, constraints or Any."""

    def test_unbound_expected_accepts_anything(self) -> None:
        """An unbound TypeVar accepts any type."""
        assert is_compatible(pd.DataFrame, T) is True

    def test_bound_expected(self) -> None:
        """A bound TypeVar accepts subtypes of its bound only."""
        assert is_compatible(bool, T_int) is True
        assert is_compatible(str, T_int) is False

    def test_constrained_expected(self) -> None:
        """A constrained TypeVar accepts any of its constraints only."""
        assert is_compatible(str, T_str_bytes) is True
        assert is_compatible(bytes, T_str_bytes) is True
        assert is_compatible(int, T_str_bytes) is False

    def test_unbound_provided(self) -> None:
        """An unbound provided TypeVar is treated as Any."""
        assert is_compatible(T, int) is True

    def test_bound_provided(self) -> None:
        """A bound provided TypeVar is treated as its bound."""
        assert is_compatible(T_int, float) is True
        assert is_compatible(T_int, str) is False

    def test_constrained_provided_is_lenient(self) -> None:
        """A constrained provided TypeVar fits if any constraint fits, else not."""
        assert is_compatible(T_str_bytes, str) is True
        assert is_compatible(T_str_bytes, int) is False

    def test_typevar_in_generic(self) -> None:
        """list[T] fits list[int], and list[int] fits list[T]."""
        assert is_compatible(list[T], list[int]) is True
        assert is_compatible(list[int], list[T]) is True


class TestNewTypes:
    """NewTypes unwrap to their supertype; expected NewTypes are lenient."""

    def test_same_newtype(self) -> None:
        """A NewType fits itself."""
        assert is_compatible(UserId, UserId) is True

    def test_newtype_for_supertype(self) -> None:
        """UserId fits int and float, not str."""
        assert is_compatible(UserId, int) is True
        assert is_compatible(UserId, float) is True
        assert is_compatible(UserId, str) is False

    def test_supertype_for_newtype_is_lenient(self) -> None:
        """int fits UserId leniently; str does not."""
        assert is_compatible(int, UserId) is True
        assert is_compatible(str, UserId) is False

    def test_nested_newtypes(self) -> None:
        """AdminId (a UserId) fits UserId and int."""
        assert is_compatible(AdminId, UserId) is True
        assert is_compatible(AdminId, int) is True
        assert is_compatible(AdminId, str) is False


class TestUndecidable:
    """Unresolved or unknown annotations are accepted, and nothing raises."""

    def test_string_annotations(self) -> None:
        """Unresolved string annotations are accepted on either side."""
        assert is_compatible("pd.DataFrame", int) is True
        assert is_compatible(int, "SomeModel") is True

    def test_forward_refs(self) -> None:
        """typing.ForwardRef is accepted on either side, also inside generics."""
        assert is_compatible(typing.ForwardRef("X"), int) is True
        assert is_compatible(list[int], list["X"]) is True  # noqa: F821

    def test_bottom_type_provided(self) -> None:
        """NoReturn provided (a step that never returns) fits anything."""
        assert is_compatible(NoReturn, pd.DataFrame) is True

    def test_never_expected(self) -> None:
        """Nothing but Never fits Never."""
        assert is_compatible(int, typing.Never) is False
        assert is_compatible(typing.Never, typing.Never) is True

    @pytest.mark.parametrize("odd", [5, "", object(), [int], (int,), {int: str}, Ellipsis])
    def test_odd_inputs_are_lenient(self, odd: object) -> None:
        """Values that are not annotations are accepted rather than raising."""
        assert is_compatible(odd, int) is True
        assert is_compatible(int, odd) is True

    def test_hostile_objects_do_not_raise(self) -> None:
        """Objects whose __eq__, __hash__ and __repr__ raise still give an answer."""

        class Hostile:
            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no")

            def __hash__(self) -> int:
                raise RuntimeError("no")

            def __repr__(self) -> str:
                raise RuntimeError("no")

        assert is_compatible(Hostile(), int) is True
        assert is_compatible(int, Hostile()) is True
        assert type_repr(Hostile()).startswith("<")

    def test_deeply_nested_does_not_raise(self) -> None:
        """Very deep generics are answered without RecursionError."""
        deep: Any = int
        for _ in range(200):
            deep = list[deep]
        assert is_compatible(deep, deep) is True
        assert isinstance(type_repr(deep), str)


class TestTypeRepr:
    """type_repr names annotations the way users write them."""

    @pytest.mark.parametrize(
        ("tp", "expected"),
        [
            (int, "int"),
            (str, "str"),
            (None, "None"),
            (type(None), "None"),
            (Any, "Any"),
            (inspect.Parameter.empty, "Any"),
            (list[int], "list[int]"),
            (typing.List[int], "list[int]"),  # noqa: UP006
            (dict[str, float], "dict[str, float]"),
            (tuple[int, ...], "tuple[int, ...]"),
            (int | None, "int | None"),
            (Optional[int], "int | None"),  # noqa: UP045
            (Union[int, str], "int | str"),  # noqa: UP007
            (Annotated[int, "meta"], "int"),
            (list[Annotated[str, "meta"]], "list[str]"),
            (Literal["a", 1], "Literal['a', 1]"),
            (T, "T"),
            ("pd.DataFrame", "pd.DataFrame"),
            (typing.ForwardRef("Model"), "Model"),
            (typing.Never, "Never"),
        ],
    )
    def test_names(self, tp: object, expected: str) -> None:
        """Builtins, generics, unions, literals and special forms read naturally."""
        assert type_repr(tp) == expected

    def test_reexported_class_uses_package_name(self) -> None:
        """pandas.core.frame.DataFrame is named pandas.DataFrame."""
        assert type_repr(pd.DataFrame) == "pandas.DataFrame"
        assert type_repr(np.ndarray) == "numpy.ndarray"

    def test_generic_of_third_party(self) -> None:
        """Generics name their third-party arguments by package."""
        assert type_repr(dict[str, pd.DataFrame]) == "dict[str, pandas.DataFrame]"
        assert type_repr(pd.DataFrame | None) == "pandas.DataFrame | None"

    def test_callable(self) -> None:
        """Callable parameter lists are bracketed."""
        assert type_repr(typing.Callable[[int, str], float]) == (
            "collections.abc.Callable[[int, str], float]"
        )
        assert type_repr(abc.Callable[..., int]) == "collections.abc.Callable[..., int]"

    def test_enum_literal(self) -> None:
        """Enum members in literals read as Class.MEMBER."""
        assert type_repr(Literal[Shade.LIGHT]).endswith("Shade.LIGHT]")

    def test_newtype(self) -> None:
        """A NewType is named by its own name."""
        assert type_repr(UserId).endswith("UserId")

    def test_shortest_reexporting_module(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The shortest imported package that re-exports the class names it."""
        names = ("fakepkg", "fakepkg.sub", "fakepkg.sub._impl")
        pkg, sub, leaf = (types.ModuleType(n) for n in names)
        thing = type("Thing", (), {"__module__": "fakepkg.sub._impl"})
        for module in (pkg, sub, leaf):
            monkeypatch.setitem(sys.modules, module.__name__, module)
        leaf.Thing = thing  # type: ignore[attr-defined]
        assert type_repr(thing) == "fakepkg.sub._impl.Thing"
        sub.Thing = thing  # type: ignore[attr-defined]
        assert type_repr(thing) == "fakepkg.sub.Thing"
        pkg.Thing = thing  # type: ignore[attr-defined]
        assert type_repr(thing) == "fakepkg.Thing"

    def test_lookalike_is_not_reexport(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A different object under the same name in the package is not a re-export."""
        pkg, leaf = types.ModuleType("fakepkg2"), types.ModuleType("fakepkg2.impl")
        thing = type("Thing", (), {"__module__": "fakepkg2.impl"})
        pkg.Thing = type("Thing", (), {})  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "fakepkg2", pkg)
        monkeypatch.setitem(sys.modules, "fakepkg2.impl", leaf)
        assert type_repr(thing) == "fakepkg2.impl.Thing"

    def test_module_getattr_not_triggered(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Naming a type never calls a lazy module __getattr__ (no imports, no warnings)."""
        calls: list[str] = []
        pkg = types.ModuleType("fakepkg3")

        def lazy(name: str) -> object:
            calls.append(name)
            raise AttributeError(name)

        pkg.__getattr__ = lazy  # type: ignore[method-assign]
        monkeypatch.setitem(sys.modules, "fakepkg3", pkg)
        thing = type("Thing", (), {"__module__": "fakepkg3.impl"})
        assert type_repr(thing) == "fakepkg3.impl.Thing"
        assert calls == []

    def test_local_class_uses_qualname(self) -> None:
        """A class defined in a function is named module.<locals> qualname."""

        class Local:
            pass

        assert type_repr(Local).endswith("test_local_class_uses_qualname.<locals>.Local")

    def test_main_module_class_is_bare(self) -> None:
        """Classes from __main__ are named without the module."""
        thing = type("Script", (), {"__module__": "__main__"})
        assert type_repr(thing) == "Script"


class TestKnownFit:
    """is_known_fit: compatibility on evidence only, for suggestions."""

    @pytest.mark.parametrize(
        ("provided", "expected"),
        [
            (int, int),
            (bool, int),
            (Dog, Animal),
            (list[bool], abc.Sequence[int]),
            (MyFrame, pd.DataFrame),
        ],
    )
    def test_definite_fits(self, provided: object, expected: object) -> None:
        """Types that fit by the ordinary rules are known fits."""
        assert typecheck.is_known_fit(provided, expected)

    @pytest.mark.parametrize(
        ("provided", "expected"),
        [
            (Any, int),
            (int, Any),
            (inspect.Parameter.empty, int),
            (int, object),
            ("pd.DataFrame", pd.DataFrame),
            (int, typing.ForwardRef("Frame")),
            (T, int),
            (NoReturn, int),
            (Annotated[Any, "x"], int),
        ],
    )
    def test_vague_annotations_never_fit(self, provided: object, expected: object) -> None:
        """Where is_compatible is lenient for lack of information, is_known_fit says no."""
        assert is_compatible(provided, expected)
        assert not typecheck.is_known_fit(provided, expected)

    def test_mismatch_is_no_fit(self) -> None:
        """A clear mismatch is no fit either."""
        assert not typecheck.is_known_fit(str, int)


class TestModule:
    """Module-level properties."""

    def test_imports_no_heavy_packages(self) -> None:
        """Importing the module alone loads neither pandas nor numpy."""
        code = (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('tc', {typecheck.__file__!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "assert module.is_compatible(int, float)\n"
            "print(sorted({'pandas', 'numpy'} & set(sys.modules)))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"

    def test_public_names(self) -> None:
        """__all__ lists exactly the three public functions."""
        assert sorted(typecheck.__all__) == ["is_compatible", "is_known_fit", "type_repr"]
