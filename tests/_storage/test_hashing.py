"""Tests for stepflow._storage.hashing: equal values hash equal, different values differ."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import struct
import subprocess
import sys
import threading
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from typing import NamedTuple

import attrs
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stepflow._storage.hashing import (
    Hasher,
    UnhashableValueError,
    hash_bytes,
    hash_file,
    hash_strings,
    hash_value,
    register_hasher,
)
from stepflow.errors import StepflowError


def nan_with_bits(bits: int) -> float:
    """A Python float NaN with exactly these bits (payload, sign, signalling)."""
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


QUIET_NAN = 0x7FF8000000000000
PAYLOAD_NAN = 0x7FF8000000000ABC
SIGNALLING_NAN = 0x7FF0000000000001
NEGATIVE_NAN = 0xFFF8000000000000


def all_distinct(values: list[object]) -> bool:
    digests = [hash_value(value) for value in values]
    return len(set(digests)) == len(digests)


def python_stdout(code: str) -> str:
    """What ``python -c code`` prints, in a fresh interpreter (which must succeed)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


class Size(enum.IntEnum):
    SMALL = 1


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Config:
    lr: float
    layers: list[int]


@attrs.define
class AttrsConfig:
    lr: float
    layers: list[int]


class PlainObject:
    def __init__(self, value: object) -> None:
        self.value = value


class UnitArray(np.ndarray):
    def __array_finalize__(self, obj):
        self.unit = getattr(obj, "unit", None)


class Vector:
    def __init__(self, *xs: float) -> None:
        self.xs = xs
        self.lock = threading.Lock()  # unpicklable: only a registered hasher can hash it


class Vector3(Vector):
    pass


class TestScalars:
    def test_types_never_collide(self):
        """1, 1.0, True, "1", b"1", bytearray, complex and None all hash apart."""
        values = [1, 1.0, True, "1", b"1", bytearray(b"1"), 1 + 0j, None, False, 0, 0.0, ""]
        assert all_distinct(values)

    def test_equal_values_hash_equal(self):
        """Equal values built separately hash the same."""
        assert hash_value(10**30) == hash_value(int("1" + "0" * 30))
        assert hash_value("é" * 3) == hash_value("".join(["é"] * 3))

    def test_int_sizes(self):
        """Ints around the 64-bit boundary and of any size are all distinct."""
        values = [2**63 - 1, 2**63, -(2**63), -(2**63) + 1, 2**64, 10**100, -(10**100), -1]
        assert all_distinct(values)

    def test_negative_zero_differs_from_zero(self):
        """-0.0 == 0.0, but copysign and 1/x tell them apart: they hash apart (as floats, as
        complex parts, as dict keys and inside containers), and each stays stable."""
        assert hash_value(-0.0) != hash_value(0.0)
        assert hash_value(-0.0) == hash_value(float("-0"))
        assert all_distinct([complex(-0.0, 0.0), complex(0.0, -0.0), complex(0.0, 0.0)])
        assert hash_value({-0.0: "a"}) != hash_value({0.0: "a"})
        assert hash_value([1.0, -0.0]) != hash_value([1.0, 0.0])
        assert hash_value({"z": -0.0}) != hash_value({"z": 0.0})

    def test_nan_payloads_hash_equal(self):
        """NaNs with different payload, sign or signalling bits all hash the same."""
        nans = [nan_with_bits(b) for b in (QUIET_NAN, PAYLOAD_NAN, SIGNALLING_NAN, NEGATIVE_NAN)]
        assert len({hash_value(n) for n in nans}) == 1

    def test_infinities_and_nan_distinct(self):
        """inf, -inf, NaN and the largest float all differ."""
        assert all_distinct([float("inf"), float("-inf"), float("nan"), sys.float_info.max])

    def test_lone_surrogate_str(self):
        """A str with a lone surrogate is hashable and differs from its neighbours."""
        assert all_distinct(["\ud800", "\ud801", "?"])

    def test_decimal_normalised(self):
        """Decimal("1.0") == Decimal("1.00") hash equal; close values are not rounded together."""
        assert hash_value(decimal.Decimal("1.0")) == hash_value(decimal.Decimal("1.00"))
        assert hash_value(decimal.Decimal("0.00")) == hash_value(decimal.Decimal("0"))
        assert hash_value(decimal.Decimal("-0.00")) == hash_value(decimal.Decimal("-0"))
        assert hash_value(decimal.Decimal("-0")) != hash_value(decimal.Decimal("0"))
        assert hash_value(decimal.Decimal("NaN")) == hash_value(decimal.Decimal("-NaN12"))
        long_a = decimal.Decimal("1." + "0" * 40 + "1")
        long_b = decimal.Decimal("1." + "0" * 40 + "2")
        assert all_distinct([long_a, long_b, decimal.Decimal(1), decimal.Decimal("10")])

    def test_fraction(self):
        """Fractions hash by value in lowest terms and differ from floats."""
        assert hash_value(fractions.Fraction(2, 4)) == hash_value(fractions.Fraction(1, 2))
        assert all_distinct([fractions.Fraction(1, 2), 0.5, fractions.Fraction(1, 3)])

    def test_aware_datetimes_by_instant(self):
        """Aware datetimes of the same instant in different zones hash equal; naive differs."""
        utc = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC)
        plus_one = datetime.datetime(
            2024, 1, 1, 13, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
        )
        naive = datetime.datetime(2024, 1, 1, 12)
        assert hash_value(utc) == hash_value(plus_one)
        assert hash_value(utc) != hash_value(naive)

    def test_datetime_types_distinct(self):
        """date, datetime, time and timedelta of related values all differ."""
        values = [
            datetime.date(2024, 1, 1),
            datetime.datetime(2024, 1, 1),
            datetime.time(0, 0),
            datetime.timedelta(0),
            datetime.datetime(2024, 1, 1, 0, 0, 0, 1),
            datetime.datetime.min.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
        ]
        assert all_distinct(values)

    def test_uuid_and_paths(self):
        """UUIDs by value; Path equals PurePosixPath, Windows paths differ and ignore case."""
        assert hash_value(uuid.UUID(int=5)) == hash_value(uuid.UUID(int=5))
        assert hash_value(pathlib.Path("a/b")) == hash_value(pathlib.PurePosixPath("a/b"))
        assert hash_value(pathlib.PurePosixPath("a/b")) != hash_value(
            pathlib.PureWindowsPath("a/b")
        )
        assert hash_value(pathlib.PureWindowsPath("A/B")) == hash_value(
            pathlib.PureWindowsPath("a\\b")
        )
        assert all_distinct(
            [pathlib.PurePosixPath("a/b"), "a/b", uuid.UUID(int=5), uuid.UUID(int=6)]
        )

    def test_enums(self):
        """Enum members hash by class and name, apart from their values (IntEnum too)."""
        assert all_distinct([Colour.RED, Colour.GREEN, 1, Size.SMALL, "RED"])
        assert hash_value(Size.SMALL) == hash_value(Size(1))

    def test_range_compares_as_sequence(self):
        """range(0, 5, 2) == range(0, 6, 2) and empty ranges are equal; others differ."""
        assert hash_value(range(0, 5, 2)) == hash_value(range(0, 6, 2))
        assert hash_value(range(0)) == hash_value(range(5, 5))
        assert all_distinct([range(3), range(1, 3), range(0, 3, 2), [0, 1, 2]])

    def test_slice_and_types(self):
        """Slices by their parts and classes by qualified name."""
        assert all_distinct([slice(1, 2), slice(1, 2, 1), int, float, Colour, (1, 2)])
        assert hash_value(slice(None, 3)) == hash_value(slice(None, 3))


class TestContainers:
    def test_tuple_differs_from_list(self):
        """[1, 2] and (1, 2) hash apart, and so do nestings of the same leaves."""
        assert all_distinct([[1, 2], (1, 2), [[1], 2], [1, [2]], [1, 2, None], {1, 2}])

    def test_dict_order_does_not_count(self):
        """Dicts with the same items in another insertion order hash equal."""
        first = {"a": 1, "b": [1, 2], 3: {"x": None}}
        second = {3: {"x": None}, "b": [1, 2], "a": 1}
        assert hash_value(first) == hash_value(second)

    def test_dict_values_and_keys_count(self):
        """Swapping values between keys, or keys of another type, changes the hash."""
        assert all_distinct([{"a": 1, "b": 2}, {"a": 2, "b": 1}, {1: 1, 2: 2}, {"a": 1}])

    def test_set_order_does_not_count(self):
        """Sets built in different orders (with colliding str hashes) hash equal."""
        items = [f"item{i}" for i in range(200)]
        assert hash_value(set(items)) == hash_value(set(reversed(items)))
        assert hash_value(frozenset(items)) != hash_value(set(items))

    def test_unorderable_dict_values(self):
        """Dict values that cannot be compared with < are still hashable."""
        assert hash_value({"a": {1}, "b": {2}}) == hash_value({"b": {2}, "a": {1}})

    def test_ordered_dict_order_counts(self):
        """OrderedDicts compare order-sensitively, so their order counts."""
        first = OrderedDict([("a", 1), ("b", 2)])
        second = OrderedDict([("b", 2), ("a", 1)])
        assert all_distinct([first, second, {"a": 1, "b": 2}])

    def test_builtin_subclasses_tagged(self):
        """Counter, defaultdict and deque differ from the plain builtins with the same items."""
        plain = {"a": 1}
        values = [plain, Counter(plain), defaultdict(int, plain), defaultdict(list, plain)]
        assert all_distinct(values)
        assert all_distinct([deque([1, 2]), deque([1, 2], maxlen=5), [1, 2]])

    def test_self_reference_is_hashable(self):
        """A list containing itself hashes, deterministically, apart from its acyclic cousin."""
        first: list[object] = [1]
        first.append(first)
        second: list[object] = [1]
        second.append(second)
        assert hash_value(first) == hash_value(second)
        assert hash_value(first) != hash_value([1, [1]])

    def test_shared_reference_is_not_a_cycle(self):
        """The same list twice hashes like two equal lists."""
        inner = [1, 2]
        assert hash_value([inner, inner]) == hash_value([[1, 2], [1, 2]])

    def test_records(self):
        """NamedTuples, dataclasses and attrs classes hash by class and fields."""
        assert all_distinct([Point(1, 2), (1, 2), Config(0.1, [1]), AttrsConfig(0.1, [1])])
        assert hash_value(Config(0.1, [1, 2])) == hash_value(Config(0.1, [1, 2]))
        assert hash_value(Config(0.1, [1, 2])) != hash_value(Config(0.1, [1, 3]))
        assert hash_value(AttrsConfig(0.1, [1])) != hash_value(AttrsConfig(0.2, [1]))


class TestFallbackAndRegistry:
    def test_pickle_fallback(self):
        """Plain objects fall back to their pickle: equal state equal, other state differs."""
        assert hash_value(PlainObject([1, 2])) == hash_value(PlainObject([1, 2]))
        assert hash_value(PlainObject([1, 2])) != hash_value(PlainObject([1, 3]))

    def test_unhashable_value_error(self):
        """An unpicklable object without a hasher raises a clear UnhashableValueError."""
        with pytest.raises(UnhashableValueError) as excinfo:
            hash_value({"key": [threading.Lock()]})
        message = str(excinfo.value)
        assert "_thread.lock" in message
        assert "register_hasher" in message
        assert "picklable" in message
        assert isinstance(excinfo.value, StepflowError)
        assert isinstance(excinfo.value, TypeError)
        assert excinfo.value.value_type is type(threading.Lock())

    def test_register_hasher(self):
        """A registered hasher is used, for subclasses too, and the class name counts."""
        register_hasher(Vector, lambda vector, hasher: hasher.add(vector.xs))
        assert hash_value(Vector(1.0, 2.0)) == hash_value(Vector(1.0, 2.0))
        assert all_distinct([Vector(1.0, 2.0), Vector(1.0, 3.0), Vector3(1.0, 2.0), (1.0, 2.0)])

    def test_register_hasher_rejects_non_class(self):
        """register_hasher needs a class and a callable."""
        with pytest.raises(TypeError, match="needs a class"):
            register_hasher("Vector", lambda v, h: None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            register_hasher(Vector, None)  # type: ignore[arg-type]

    def test_register_hasher_keeps_builtin_encodings(self):
        """The built-in encodings cannot be replaced: stored digests depend on them."""
        with pytest.raises(TypeError, match="built-in encoding of int"):
            register_hasher(int, lambda v, h: None)

    def test_hasher_primitives_are_self_delimiting(self):
        """add_bytes("ab"), add_bytes("c") differs from add_bytes("a"), add_bytes("bc")."""
        first, second = Hasher(), Hasher()
        first.add_bytes(b"ab")
        first.add_bytes(b"c")
        second.add_bytes(b"a")
        second.add_bytes(b"bc")
        assert first.hexdigest() != second.hexdigest()
        assert len(first.hexdigest()) == 32

    def test_import_is_lazy(self):
        """Importing the module and hashing plain values imports neither numpy nor pandas."""
        code = (
            "import sys, stepflow\n"
            "before = {m for m in ('numpy', 'pandas') if m in sys.modules}\n"
            "import stepflow._storage.hashing as h\n"
            "h.hash_value({'a': [1.5, None, ('x', b'y')]})\n"
            "print(sorted({m for m in ('numpy', 'pandas') if m in sys.modules} - before))\n"
        )
        assert python_stdout(code).strip() == "[]"

    def test_standard_library_handlers_load_lazily(self):
        """fractions, uuid and dataclasses are imported only by whoever uses them; their
        values hash the same either way, and their encodings still cannot be replaced."""
        code = (
            "import sys\n"
            "import stepflow._storage.hashing as h\n"
            "print(sorted(m for m in ('fractions', 'uuid', 'dataclasses') if m in sys.modules))\n"
            "import dataclasses, fractions, uuid\n"
            "@dataclasses.dataclass\n"
            "class P:\n"
            "    x: int\n"
            "print(h.hash_value(fractions.Fraction(3, 4)), h.hash_value(uuid.UUID(int=7)))\n"
            "print(h.hash_value(P(1)) != h.hash_value(P(2)))\n"
            "try:\n"
            "    h.register_hasher(uuid.UUID, lambda v, hasher: None)\n"
            "except TypeError as exc:\n"
            "    print(exc)\n"
        )
        lines = python_stdout(code).splitlines()
        assert lines[0] == "[]"
        assert lines[1] == f"{hash_value(fractions.Fraction(3, 4))} {hash_value(uuid.UUID(int=7))}"
        assert lines[2] == "True"
        assert "cannot replace the built-in encoding of UUID" in lines[3]


class TestHashStrings:
    @pytest.mark.parametrize(
        "value",
        [
            "",
            "a",
            "\ud800 lone surrogate",
            (),
            ("",),
            ("a", ("b", "c")),
            (("x",), (), ("y", ("z", "")), "é"),
            ("digest", (("s4", "a" * 32),), (), (("python", "CPython 3.11"),), "s5"),
        ],
    )
    def test_same_digest_as_hash_value(self, value):
        """hash_strings is a faster hash_value for nested tuples of str: same digest."""
        assert hash_strings(value) == hash_value(value)

    def test_nesting_counts(self):
        """Regrouping the same strings gives another digest."""
        assert hash_strings(("a", ("b", "c"))) != hash_strings((("a", "b"), "c"))
        assert hash_strings(("ab",)) != hash_strings(("a", "b"))

    @pytest.mark.parametrize("value", [1, ("a", 1), ["a"], ("a", ["b"]), ("a", None)])
    def test_other_types_refused(self, value):
        """Anything but str and tuple is refused rather than encoded differently."""
        with pytest.raises(TypeError, match="strs and tuples"):
            hash_strings(value)


class TestBytesAndFiles:
    def test_hash_file_equals_hash_bytes(self, tmp_path):
        """hash_file streams to the same digest as hash_bytes, whatever the chunk size."""
        data = bytes(range(256)) * 1000
        path = tmp_path / "blob"
        path.write_bytes(data)
        assert hash_file(path) == hash_bytes(data)
        assert hash_file(str(path), chunk=1000) == hash_bytes(data)
        assert hash_bytes(memoryview(data)[::2]) == hash_bytes(data[::2])

    @pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5000])
    @pytest.mark.parametrize("mapped", [False, True])
    def test_every_read_path_gives_the_same_digest(self, tmp_path, size, mapped):
        """Small files are read whole, large ones mapped or read in chunks (chunk=1000
        makes 1000 bytes 'large' here): all give hash_bytes' digest."""
        data = (bytes(range(251)) * 20)[:size]
        path = tmp_path / "blob"
        path.write_bytes(data)
        assert hash_file(path, chunk=1000, mapped=mapped) == hash_bytes(data)

    def test_raw_bytes_differ_from_values(self):
        """hash_bytes is untagged, so it differs from hash_value of the same bytes."""
        assert hash_bytes(b"abc") != hash_value(b"abc")
        assert len(hash_bytes(b"")) == 32


class TestNumpy:
    def test_memory_layout_does_not_count(self):
        """C order, Fortran order, a strided view and its copy hash equal when values are."""
        array = np.arange(60, dtype=np.float64).reshape(6, 10)
        assert hash_value(array) == hash_value(np.asfortranarray(array))
        view = array[::2, 1::3]
        assert hash_value(view) == hash_value(view.copy())
        assert hash_value(array.T) == hash_value(np.ascontiguousarray(array.T))

    def test_dtype_and_shape_count(self):
        """The same numbers as int64, int32 and float64, or in another shape, hash apart."""
        base = np.arange(6)
        values = [
            base.astype(np.int64),
            base.astype(np.int32),
            base.astype(np.float64),
            base.reshape(2, 3),
            base.reshape(3, 2),
            list(range(6)),
        ]
        assert all_distinct(values)

    def test_nan_payloads_equal_negative_zero_differs(self):
        """Float arrays differing only in NaN payload bits hash equal; -0.0 and 0.0 differ."""
        bits = np.array([QUIET_NAN, 0x3FF0000000000000, 0], dtype=np.uint64)
        other = np.array([PAYLOAD_NAN, 0x3FF0000000000000, 0], dtype=np.uint64)
        signalling = np.array([SIGNALLING_NAN, 0x3FF0000000000000, 0], dtype=np.uint64)
        negative = np.array([NEGATIVE_NAN, 0x3FF0000000000000, 0], dtype=np.uint64)
        digests = {hash_value(b.view(np.float64)) for b in (bits, other, signalling, negative)}
        assert len(digests) == 1
        assert hash_value(bits.view(np.float64)) != hash_value(np.array([np.nan, 1.0, 1.0]))
        zero = np.array([1.0, 0.0, 2.0])
        assert hash_value(zero) != hash_value(np.array([1.0, -0.0, 2.0]))
        # -0.0 and a NaN in one piece: the NaN is canonicalised, the sign of zero kept.
        assert hash_value(np.array([np.nan, -0.0])) == hash_value(
            np.array([PAYLOAD_NAN, 0x8000000000000000], dtype=np.uint64).view(np.float64)
        )
        assert hash_value(np.array([np.nan, -0.0])) != hash_value(np.array([np.nan, 0.0]))

    def test_float32_and_complex_canonical(self):
        """float32 NaN payloads are canonicalised too; -0.0 stays apart in float32 and complex."""
        quiet = np.array([0x7FC00000, 0x80000000], dtype=np.uint32).view(np.float32)
        payload = np.array([0xFFC00123, 0x80000000], dtype=np.uint32).view(np.float32)
        assert hash_value(quiet) == hash_value(payload)
        assert hash_value(quiet) != hash_value(np.array([np.nan, 0.0], dtype=np.float32))
        assert hash_value(np.array([complex(-0.0, 1)])) != hash_value(np.array([complex(0.0, 1)]))

    def test_object_arrays_elementwise(self):
        """Object arrays hash their elements' values; None and NaN differ."""
        first = np.array([{"a": 1}, "x", None], dtype=object)
        second = np.array([{"a": 1}, "x", None], dtype=object)
        assert hash_value(first) == hash_value(second)
        assert hash_value(np.array([1.0, None], dtype=object)) != hash_value(
            np.array([1.0, np.nan], dtype=object)
        )

    def test_structured_and_byte_order(self):
        """Structured arrays hash by field; big-endian equals little-endian of the same values."""
        dtype = np.dtype([("a", "<i4"), ("b", "<f8")])
        array = np.array([(1, 2.0), (3, -0.0)], dtype=dtype)
        assert hash_value(array) == hash_value(array.astype(dtype.newbyteorder(">")))
        renamed = array.astype(np.dtype([("x", "<i4"), ("b", "<f8")]))
        assert hash_value(array) != hash_value(renamed)
        assert hash_value(np.arange(5, dtype=">f8")) == hash_value(np.arange(5, dtype="<f8"))

    def test_scalars_dtype_tagged(self):
        """numpy scalars differ by dtype and from the Python scalar; NaN rules still apply."""
        assert all_distinct([np.float64(1), np.float32(1), np.int64(1), 1.0, 1, np.str_("1"), "1"])
        assert hash_value(np.float64(-0.0)) != hash_value(np.float64(0.0))
        assert hash_value(np.float64(nan_with_bits(PAYLOAD_NAN))) == hash_value(np.float64("nan"))

    def test_array_subclass(self):
        """A subclass with attributes: its layout does not count, its class and attributes do."""
        metres = np.arange(6.0).reshape(2, 3).view(UnitArray)
        metres.unit = "m"
        assert hash_value(metres) == hash_value(metres.copy(order="F"))
        feet = metres.copy()
        feet.unit = "ft"
        assert all_distinct([metres, feet, np.asarray(metres)])

    def test_datetime64_and_masked(self):
        """datetime64 arrays hash by value; a masked array's mask counts, data under it does not."""
        days = np.array(["2024-01-01", "NaT"], dtype="M8[D]")
        assert hash_value(days) == hash_value(days.copy())
        masked = np.ma.array([1.0, 2.0], mask=[False, True])
        other_under_mask = np.ma.array([1.0, 99.0], mask=[False, True])
        assert hash_value(masked) == hash_value(other_under_mask)
        assert hash_value(masked) != hash_value(np.ma.array([1.0, 2.0], mask=[False, False]))

    def test_large_array_across_pieces(self):
        """A 10 MB array: Fortran order and a NaN with odd payload in a late piece hash equal."""
        array = np.linspace(-1.0, 1.0, 10 * (1 << 20) // 8).reshape(-1, 16)
        array[-1, -1] = np.nan
        odd = array.copy()
        odd.reshape(-1).view(np.uint64)[-1] = PAYLOAD_NAN
        assert hash_value(np.asfortranarray(odd)) == hash_value(array)
        odd[1000, 3] = -0.0
        array[1000, 3] = 0.0
        assert hash_value(np.asfortranarray(odd)) != hash_value(array)
        array[5000, 5] += 1e-9
        assert hash_value(odd) != hash_value(array)


def frame_a() -> pd.DataFrame:
    return pd.DataFrame(
        {"x": [1.0, 2.0, np.nan], "y": [1, 2, 3], "s": ["a", None, "c"]},
        index=pd.Index([10, 20, 30], name="id"),
    )


class TestPandas:
    def test_dataframe_built_two_ways(self):
        """The same table built from columns or from rows hashes equal."""
        rows = pd.DataFrame(
            [[1.0, 1, "a"], [2.0, 2, None], [np.nan, 3, "c"]],
            columns=["x", "y", "s"],
            index=pd.Index([10, 20, 30], name="id"),
        ).astype({"s": "str"})
        assert hash_value(frame_a()) == hash_value(rows)

    def test_dataframe_differences(self):
        """One cell, the index, a column name, the column order or a dtype changes the hash."""
        base = frame_a()
        cell = base.copy()
        cell.loc[20, "y"] = 5
        index = base.set_axis(pd.Index([10, 20, 31], name="id"))
        index_name = base.rename_axis("key")
        renamed = base.rename(columns={"y": "z"})
        reordered = base[["y", "x", "s"]]
        retyped = base.astype({"y": "int32"})
        assert all_distinct([base, cell, index, index_name, renamed, reordered, retyped])

    def test_series_name_and_nan_vs_none(self):
        """A Series' name counts, and NaN differs from None in object columns."""
        assert all_distinct([pd.Series([1, 2], name="a"), pd.Series([1, 2], name="b")])
        with_none = pd.Series([1.5, None], dtype=object)
        with_nan = pd.Series([1.5, np.nan], dtype=object)
        assert hash_value(with_none) != hash_value(with_nan)

    def test_string_storage_and_chunks(self):
        """Strings hash alike whether python-backed, arrow-chunked or an arrow slice."""
        values = ["a", "bb", None, "ccc"]
        arrow = pd.Series(values, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
        python = pd.Series(values, dtype=pd.StringDtype("python", na_value=np.nan))
        chunked = pd.Series(
            pd.arrays.ArrowStringArray(pa.chunked_array([["a", "bb"], [None, "ccc"]])),
        ).astype(arrow.dtype)
        sliced = pd.Series(["zz", *values], dtype=arrow.dtype).iloc[1:].reset_index(drop=True)
        assert len({hash_value(s) for s in (arrow, python, chunked, sliced)}) == 1
        assert hash_value(arrow) != hash_value(
            pd.Series(["a", "b", None, "bccc"], dtype=arrow.dtype)
        )

    def test_nullable_and_categorical(self):
        """Nullable ints ignore data under NA; categoricals hash categories and codes."""
        first = pd.array([1, None, 3], dtype="Int64")
        second = pd.array([1, 2, 3], dtype="Int64")
        second[1] = None
        assert hash_value(pd.Series(first)) == hash_value(pd.Series(second))
        assert hash_value(pd.Series(first)) != hash_value(pd.Series([1.0, np.nan, 3.0]))
        cat = pd.Series(pd.Categorical(["a", "b", "a"]))
        assert hash_value(cat) == hash_value(pd.Series(["a", "b", "a"], dtype="category"))
        assert all_distinct([cat, pd.Series(pd.Categorical(["a", "b", "a"], ordered=True))])

    def test_datetimes_and_indexes(self):
        """tz-aware columns, Timestamps of any unit, RangeIndex and MultiIndex hash soundly."""
        stamps = pd.Series(pd.to_datetime(["2024-01-01", "2024-06-01"]).tz_localize("UTC"))
        assert hash_value(stamps) != hash_value(stamps.dt.tz_convert("Europe/Paris"))
        seconds = pd.Timestamp("2024-01-01").as_unit("s")
        assert hash_value(seconds) == hash_value(pd.Timestamp("2024-01-01").as_unit("ns"))
        assert all_distinct([pd.Timestamp("2024-01-01 00:00:00.000000001"), seconds, pd.NaT, pd.NA])
        assert all_distinct([pd.RangeIndex(3), pd.Index([0, 1, 2]), pd.RangeIndex(1, 4)])
        assert hash_value(pd.RangeIndex(0, 5, 2)) == hash_value(pd.RangeIndex(0, 6, 2))
        tuples = [("a", 1), ("b", 2)]
        first = pd.MultiIndex.from_tuples(tuples)
        second = pd.MultiIndex.from_arrays([["a", "b"], [1, 2]])
        assert hash_value(first) == hash_value(second)
        assert hash_value(first) != hash_value(pd.MultiIndex.from_tuples(tuples[::-1]))


class TestStability:
    # Frozen digests: if one of these changes, every cache key users have changes with it and
    # every stored result becomes a miss. Change them only on purpose, together with
    # HASH_ENCODING_VERSION.
    @pytest.mark.parametrize(
        ("value", "digest"),
        [
            (None, "520a39d07743e44bf46ab2a1503bed32"),
            (1, "69a43aa08d3ff4af0caaea5ab5c6a857"),
            (1.5, "190f6decd0b87e79c84c7aea4731e224"),
            (0.0, "778d9f0ec8576ab77bce7830e2250012"),
            (-0.0, "f8bc9674338a3334a11c6754d4b3a95f"),
            ("stepflow", "d97b156530efd4fb7d2ea048feed0d5a"),
            ([1, "a", None], "d7b18cd782c13087c9a32c64e9122246"),
            ({"b": 2, "a": (1.0, True)}, "aa737830338cdbbc0251e3839a9caa24"),
            (fractions.Fraction(3, 4), "7f45a706810933993b17893b319edcbc"),
            (uuid.UUID(int=7), "9f3c30ae22726f20847dde540edcace4"),
            (decimal.Decimal("1.50"), "a7cd31d5ebcd901f352888563fe4d834"),
        ],
    )
    def test_frozen_digests(self, value, digest):
        """Simple values keep the digest they had when the encoding was frozen."""
        assert hash_value(value) == digest

    def test_frozen_array_digest(self):
        """A small float64 array keeps its frozen digest."""
        digest = hash_value(np.array([[1.0, -0.0], [np.nan, 2.5]]))
        # Changed with HASH_ENCODING_VERSION 2, when -0.0 kept its sign bit.
        assert digest == "2b3ae577c01bcd7bd4e1e2a36340ef9a"


class TestPublicRegisterHasher:
    """``register_hasher`` is public API: used from ``stepflow`` as a user would."""

    def test_exported_from_stepflow(self):
        """``stepflow.register_hasher`` and ``stepflow.Hasher`` are listed in ``__all__``."""
        import stepflow

        assert {"register_hasher", "Hasher"} <= set(stepflow.__all__)
        assert stepflow.register_hasher is register_hasher
        assert stepflow.Hasher is Hasher

    def test_error_advice_works(self):
        """The unhashable-value error names ``stepflow.register_hasher``, and following that
        advice makes the value hashable, by the parts the user chose."""
        from stepflow import Hasher as PublicHasher
        from stepflow import register_hasher as public_register_hasher

        class Handle:
            def __init__(self, name: str) -> None:
                self.name = name
                self.lock = threading.Lock()

        with pytest.raises(UnhashableValueError, match=r"stepflow\.register_hasher\(Handle, fn\)"):
            hash_value(Handle("a"))

        def hash_handle(handle: Handle, hasher: PublicHasher) -> None:
            hasher.add(handle.name)

        public_register_hasher(Handle, hash_handle)
        assert hash_value(Handle("a")) == hash_value(Handle("a"))
        assert hash_value(Handle("a")) != hash_value(Handle("b"))
