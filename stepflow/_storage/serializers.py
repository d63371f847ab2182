"""Serializers write step outputs to files in the datastore and read them back.

A serializer works on files, not bytes, so a 400 MB DataFrame is never held twice in memory:
the datastore gives ``dump`` a temporary path in the right folder, renames the file once it is
complete, and later hands the final path to ``load``. A serializer that can also write
through a file object (``inline``: ``npy`` and ``cloudpickle``) lets a small output stay in
memory while it is written, and live inside its cache-index record when it ends up under
32 KiB (``stepflow._storage.artifacts``); a larger one moves on to its file as it grows.

Built-ins, tried in this order (:func:`builtin_serializers`):

``parquet``
    pandas DataFrames and Series whose columns, index and dtypes survive Parquet exactly
    (see :class:`ParquetSerializer` for the rule); anything else goes on down the list.
``npy``
    numpy arrays of any non-object dtype; loaded as a copy-on-write memory map.
``joblib``
    scikit-learn-like estimators (``fit`` and ``get_params``), numpy arrays written raw.
``cloudpickle``
    everything else that can be pickled: the fallback.

Serializers are plugins: ``stepflow_serializer_types`` returns instances, and the first in
the list whose ``can_dump`` accepts a value is used, so a plugin's serializer placed before
the built-ins takes the values it accepts. When its ``dump`` fails
(pyarrow cannot convert a column of mixed ints and strings, say), :func:`dump_with_fallback`
removes the partial file and tries the next serializer that accepts the value.

Nothing here imports pandas, numpy, pyarrow or joblib until a value needs them: ``can_dump``
recognizes pandas and numpy objects by their class's module and name, and a value of those
types means its library is already imported.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from stepflow.errors import StepflowError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CloudpickleSerializer",
    "JoblibSerializer",
    "NumpySerializer",
    "ParquetSerializer",
    "SerializationError",
    "Serializer",
    "builtin_serializers",
    "dump_with_fallback",
    "select_serializer",
    "serialization_error",
]


class SerializationError(StepflowError, TypeError):
    """No serializer could store a value.

    :ivar value_type: the type of the value, when known.
    :ivar failures: ``(serializer name, exception)`` for each serializer that tried and failed.
    """

    def __init__(
        self,
        message: str,
        *,
        value_type: type | None = None,
        failures: Sequence[tuple[str, BaseException]] = (),
    ) -> None:
        super().__init__(message)
        self.value_type = value_type
        self.failures = list(failures)


class Serializer:
    """Base class: subclasses set ``name``, ``version`` and ``extension`` and implement the
    three methods.

    ``dump`` writes the whole file at the path it is given and nothing else: the caller
    chose a temporary name in the right folder and renames the file afterwards. It may
    return the digest of the bytes it wrote (``stepflow._storage.hashing.hash_bytes`` of
    them, as :class:`HashingWriter` gives), which spares the caller reading the file back
    to check it; ``None`` is always right.
    """

    #: the name recorded with each artifact, so a load finds the same serializer
    name: str = ""
    #: bump when the on-disk format changes; part of the environment a cache key depends on
    version: str = "1"
    #: the file name extension of artifacts, e.g. ``".parquet"``
    extension: str = ""

    def can_dump(self, value: Any) -> bool:
        """Whether this serializer stores ``value`` faithfully; cheap, and imports nothing."""
        raise NotImplementedError

    def dump(self, value: Any, path: Path) -> str | None:
        """Write ``value`` to a new file at ``path``; optionally return the bytes' digest."""
        raise NotImplementedError

    def load(self, path: Path) -> Any:
        """Read the value stored at ``path`` by :meth:`dump`."""
        raise NotImplementedError

    #: ``True`` when the serializer also implements :meth:`write` and :meth:`loads`: a small
    #: output (under 32 KiB) is then kept inside its cache-index record, not in a file of
    #: its own (DESIGN.md section 2)
    inline: bool = False

    def write(self, value: Any, fh: BinaryIO) -> None:
        """Write ``value`` through the binary file object ``fh`` (only ``fh.write`` is
        there), the same bytes :meth:`dump` would write to a file. For ``inline``
        serializers."""
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        """Read the value from the bytes :meth:`write` wrote. For ``inline`` serializers."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} v{self.version}>"


class HashingWriter:
    """A binary file open for writing that also hashes what is written through it.

    For serializers that write through a file object (pickle): ``digest`` is then
    what reading the file back would give, without the read.
    """

    def __init__(self, path: Path) -> None:
        import xxhash

        self._file = open(path, "wb")  # closed by ``__exit__``
        self._state = xxhash.xxh3_128()

    def write(self, data: Any) -> int:
        try:
            self._state.update(data)
        except TypeError:  # a buffer xxhash does not take as it is (not contiguous bytes)
            self._state.update(memoryview(data).tobytes())
        return self._file.write(data)

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    @property
    def digest(self) -> str:
        return self._state.hexdigest()


def builtin_serializers() -> list[Serializer]:
    """The built-in serializers, most specific first; cloudpickle, which takes anything, last."""
    return [ParquetSerializer(), NumpySerializer(), JoblibSerializer(), CloudpickleSerializer()]


def select_serializer(value: Any, serializers: Sequence[Serializer]) -> Serializer:
    """The first of ``serializers`` whose ``can_dump`` accepts ``value``.

    :raises SerializationError: none accepts it.
    """
    for serializer in serializers:
        if serializer.can_dump(value):
            return serializer
    raise SerializationError(_failure_message(type(value), []), value_type=type(value))


def dump_with_fallback(value: Any, path: Path, serializers: Sequence[Serializer]) -> Serializer:
    """Write ``value`` at ``path`` with the first serializer that accepts it and succeeds.

    A serializer whose ``dump`` raises has its partial file deleted, and the next one whose
    ``can_dump`` accepts the value is tried. Returns the serializer that wrote the file.

    :raises SerializationError: every serializer that accepts the value failed, or none
        accepts it; the message names the value's type and each failure.
    """
    path = Path(path)
    failures: list[tuple[str, BaseException]] = []
    for serializer in serializers:
        if not serializer.can_dump(value):
            continue
        try:
            serializer.dump(value, path)
        except Exception as exc:
            path.unlink(missing_ok=True)
            failures.append((serializer.name, exc))
            continue
        except BaseException:
            # Ctrl-C mid-write: leave no partial file behind, and let the interrupt through.
            path.unlink(missing_ok=True)
            raise
        return serializer
    raise serialization_error(type(value), failures) from (failures[-1][1] if failures else None)


def serialization_error(
    value_type: type, failures: Sequence[tuple[str, BaseException]]
) -> SerializationError:
    """The error for a value no serializer could store, naming each one that failed."""
    return SerializationError(
        _failure_message(value_type, failures), value_type=value_type, failures=failures
    )


def _failure_message(value_type: type, failures: Sequence[tuple[str, BaseException]]) -> str:
    what = f"{value_type.__module__}.{value_type.__qualname__}"
    if failures:
        tried = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures)
        head = f"cannot store a value of type {what} ({tried})"
    else:
        head = f"cannot store a value of type {what}: no serializer accepts it"
    return (
        f"{head}. Return plain data from the step (numbers, strings, lists, dicts, arrays, "
        f"DataFrames), or register a serializer for {value_type.__qualname__} through the "
        f"`stepflow_serializer_types` hook."
    )


def _is_class(value: Any, module: str, *names: str) -> bool:
    """``type(value)`` is exactly the class ``module.name``: checked without importing it."""
    cls = type(value)
    return cls.__qualname__ in names and (
        cls.__module__ == module or cls.__module__.startswith(module + ".")
    )


# -------------------------------------------------------------------------------------------
# parquet
# -------------------------------------------------------------------------------------------

#: the column a Series is stored under; a Series has one column, so only index names can clash
_SERIES_COLUMN = "__stepflow_series__"
#: schema metadata key for what pandas metadata cannot say: Series or frame, name, index freq
_META_KEY = b"stepflow.pandas"
_MASKED_DTYPES = frozenset(
    "Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float32 Float64 boolean".split()
)
# Parquet has no seconds resolution: pyarrow writes seconds as milliseconds and reads them back
# as milliseconds, which is a different dtype.
_PARQUET_TIME_UNITS = frozenset(["ms", "us", "ns"])
_NAME_SCALARS = (str, int, float, bool, type(None))


class ParquetSerializer(Serializer):
    """pandas DataFrames and Series, through pyarrow, uncompressed.

    Only values that come back equal (``assert_frame_equal(check_exact=True)``) are accepted;
    the rest are left to the next serializer (pickle), so the rule errs towards refusing:

    - columns: unique ``str`` names, not a MultiIndex, no name starting ``__index_level_``
      (pyarrow's own); the columns' axis name is ``None`` or a ``str``;
    - column dtypes: bool, int, uint, float (16 to 64 bits, native byte order), datetime64
      and tz-aware datetimes (``zoneinfo`` zones or fixed offsets) in ms/us/ns, timedelta64,
      the nullable ``Int64``-style, ``Float64`` and ``boolean`` dtypes, pyarrow-backed
      ``string``/``str``, and categoricals of strings (in a non-empty frame). Not object
      columns (pyarrow would guess a type), python-backed strings, periods, intervals,
      sparse or ``ArrowDtype`` columns;
    - index: a RangeIndex (kept as metadata), or an index or MultiIndex of the dtypes above
      (nullable integer dtypes excepted) whose level names are ``None`` or unique ``str``;
      a DatetimeIndex or TimedeltaIndex keeps its ``freq``, but a MultiIndex level with a
      ``freq`` is refused (Parquet would drop it);
    - ``attrs`` that survive JSON; a Series name that is ``None``, a ``str``, ``int``,
      finite ``float``, ``bool`` or a tuple of these.

    Speed over size: on a 10,000,000 x 5 float64 frame (400 MB), uncompressed writes took
    0.45 s and reads 0.18 s, against 0.56 s / 0.19 s with snappy and 0.46 s / 0.18 s with
    lz4 (random floats do not compress), and dictionary encoding of float columns doubles the
    write time; so pages are plain and uncompressed, dictionary encoding is kept for
    string and categorical columns only, and no statistics are written (files are always read
    whole). A file is never larger than the data in memory.

    Writing that frame took 0.68 s; it takes 0.21 s now (median of 10, alternating in one
    process): NaN in float columns is kept as NaN instead of becoming a null, which spares
    pyarrow a scan of every float (see ``_arrow_table``); columns without nulls are then
    written as ``required``, so the writer computes and stores no definition levels; and
    values go through the writer in batches of a million into pages of up to 64 MB. Reading
    gives back the same frame either way, files written the older way included.
    """

    name = "parquet"
    version = "1"
    extension = ".parquet"

    def can_dump(self, value: Any) -> bool:
        if not _is_class(value, "pandas", "DataFrame", "Series"):
            return False
        if not _pyarrow_available():
            return False
        return _parquet_problem(value) is None

    def dump(self, value: Any, path: Path) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta: dict[str, Any] = {"kind": "DataFrame", "freq": _freqstr(value.index)}
        frame = value
        if isinstance(value, pd.Series):
            meta.update(kind="Series", name=_encode_name(value.name))
            frame = value.to_frame(name=_SERIES_COLUMN)
        table = _arrow_table(frame)
        metadata = dict(table.schema.metadata or {})
        metadata[_META_KEY] = json.dumps(meta).encode()
        # A column without nulls needs no definition levels (a third of the write time of a
        # float column); the same buffers, only the schema differs.
        schema = pa.schema(
            [
                field.with_nullable(column.null_count > 0)
                for field, column in zip(table.schema, table.columns, strict=True)
            ],
            metadata=metadata,
        )
        table = pa.Table.from_arrays(table.columns, schema=schema)
        dictionary_columns = [
            field.name for field in table.schema if _dictionary_worthy(field.type)
        ]
        pq.write_table(
            table,
            str(path),
            compression=None,
            use_dictionary=dictionary_columns,
            write_statistics=False,
            write_batch_size=_WRITE_BATCH_ROWS,
            data_page_size=_DATA_PAGE_BYTES,
        )

    def load(self, path: Path) -> Any:
        import pyarrow.parquet as pq

        # A memory map lets pyarrow decode from the page cache instead of reading the file
        # into a buffer of its own first: 2.2x instead of 3.2x the frame's size at peak.
        table = pq.read_table(str(path), memory_map=True)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        frame = table.to_pandas()
        del table
        freq = meta.get("freq")
        if freq is not None:
            frame.index = _with_freq(frame.index, freq)
        if meta.get("kind") == "Series":
            series = frame[_SERIES_COLUMN]
            series.name = _decode_name(meta.get("name"))
            return series
        return frame


def _arrow_table(frame: pd.DataFrame) -> Any:
    """``pa.Table.from_pandas(frame, preserve_index=None)``, without its scan for NaN.

    ``from_pandas`` turns every NaN of a float column into a null, which costs a pass over
    the column (0.1 to 0.2 s for 400 MB). Here float columns keep their NaN as NaN: the file
    reads back as the same frame, and a column without nulls is written as ``required``.
    Schema and pandas metadata still come from pyarrow (``Schema.from_pandas``), and every
    other column is converted as ``from_pandas`` converts it.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    # preserve_index=None keeps a RangeIndex as metadata instead of writing it as a column.
    schema = pa.Schema.from_pandas(frame, preserve_index=None)
    values: list[Any] = [frame.iloc[:, i] for i in range(frame.shape[1])]
    names = [str(c) for c in frame.columns]
    index = frame.index
    if type(index) is not pd.RangeIndex:
        for level in range(index.nlevels):
            values.append(index.get_level_values(level))
            name = index.names[level]
            names.append(f"__index_level_{level}__" if name is None else str(name))
    if schema.names != names:
        # Not the layout this relies on (a future pyarrow, say): the slower, certain way.
        return pa.Table.from_pandas(frame, preserve_index=None)
    arrays = []
    for value, field in zip(values, schema, strict=True):
        if isinstance(value.dtype, np.dtype) and value.dtype.kind == "f":
            arrays.append(pa.array(np.asarray(value), type=field.type, from_pandas=False))
        else:
            arrays.append(pa.array(value, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


#: rows the Parquet writer takes at a time (pyarrow's default, 1024, costs a call per batch)
_WRITE_BATCH_ROWS = 1 << 20
#: target size of a data page; row groups (a million rows by default) bound it in practice
_DATA_PAGE_BYTES = 64 << 20


@functools.cache
def _pyarrow_available() -> bool:
    # pyarrow is optional: without it, frames go to pickle. find_spec looks without importing.
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _dictionary_worthy(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_dictionary(arrow_type)
        or pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
    )


def _parquet_problem(value: pd.DataFrame | pd.Series) -> str | None:
    """Why ``value`` would not survive Parquet exactly, or ``None`` when it would."""
    import pandas as pd

    nonempty = len(value) > 0
    if isinstance(value, pd.DataFrame):
        columns = value.columns
        if len(columns) and type(columns) is not pd.Index:
            return "columns are not a flat Index"
        if not all(type(c) is str for c in columns):
            return "column names are not all str"
        if not columns.is_unique:
            return "duplicate column names"
        if any(c.startswith("__index_level_") for c in columns):
            return "a column name starts with __index_level_, which pyarrow uses itself"
        if not isinstance(columns.name, str | None):
            return "the columns' axis name is not a str"
        for column, dtype in value.dtypes.items():
            if not _storable_dtype(dtype, in_index=False, nonempty=nonempty):
                return f"column {column!r} has dtype {dtype}"
        index_names_taken: set[str] = set()
    else:
        if not _storable_dtype(value.dtype, in_index=False, nonempty=nonempty):
            return f"dtype {value.dtype}"
        if not _encodable_name(value.name):
            return f"the Series name {value.name!r} cannot be written as JSON"
        index_names_taken = {_SERIES_COLUMN}
    problem = _index_problem(value.index, index_names_taken, nonempty=nonempty)
    if problem is not None:
        return problem
    if value.attrs and not _json_round_trips(value.attrs):
        return "attrs do not survive JSON"
    if not value.flags.allows_duplicate_labels:
        return "allows_duplicate_labels=False is not stored"
    return None


def _index_problem(index: pd.Index, taken: set[str], *, nonempty: bool) -> str | None:
    import pandas as pd

    if type(index) is pd.RangeIndex:
        return None if isinstance(index.name, str | None) else "the index name is not a str"
    # A MultiIndex's levels hold its distinct values: checking them costs nothing per row.
    levels = list(index.levels) if isinstance(index, pd.MultiIndex) else [index]
    names = [name for name in index.names if name is not None]
    if not all(type(name) is str for name in names):
        return "an index name is not a str"
    if len(set(names)) != len(names) or taken.intersection(names):
        return "index names are not unique"
    for level in levels:
        if type(level) not in (
            pd.Index,
            pd.DatetimeIndex,
            pd.TimedeltaIndex,
            pd.CategoricalIndex,
        ):
            return f"{type(level).__name__} is not stored"
        if not _storable_dtype(level.dtype, in_index=True, nonempty=nonempty):
            return f"the index has dtype {level.dtype}"
        if level is not index and getattr(level, "freq", None) is not None:
            return "a MultiIndex level has a freq, which Parquet does not keep"
    freq = getattr(index, "freq", None)
    if freq is not None:
        from pandas.tseries.frequencies import to_offset

        # A freqstr that does not rebuild the same offset (custom business days with
        # holidays) would come back different.
        if to_offset(freq.freqstr) != freq:
            return f"the index freq {freq!r} cannot be written as a string"
    return None


def _storable_dtype(dtype: Any, *, in_index: bool, nonempty: bool) -> bool:
    import datetime
    import zoneinfo

    import numpy as np
    import pandas as pd

    if isinstance(dtype, np.dtype):
        if not dtype.isnative:
            return False
        if dtype.kind in "biu":
            return True
        if dtype.kind == "f":
            return dtype.itemsize in (2, 4, 8)
        if dtype.kind == "M":
            return np.datetime_data(dtype)[0] in _PARQUET_TIME_UNITS
        if dtype.kind == "m":
            return np.datetime_data(dtype)[0] in _PARQUET_TIME_UNITS | {"s"}
        return False
    if isinstance(dtype, pd.DatetimeTZDtype):
        # Parquet keeps a zone's name, which reads back as a ZoneInfo (or a fixed offset): a
        # dateutil or pytz zone of the same name would come back as a different dtype.
        return dtype.unit in _PARQUET_TIME_UNITS and isinstance(
            dtype.tz, zoneinfo.ZoneInfo | datetime.timezone
        )
    if isinstance(dtype, pd.StringDtype):
        # python-backed strings come back pyarrow-backed; in an index, only the default
        # ``str`` dtype comes back as itself.
        if dtype.storage != "pyarrow":
            return False
        return not in_index or dtype.na_value is not pd.NA
    if isinstance(dtype, pd.CategoricalDtype):
        # Categories of other types come back as plain columns, and an empty categorical
        # loses its categories.
        return nonempty and _is_default_str(dtype.categories.dtype)
    if not in_index and getattr(dtype, "name", None) in _MASKED_DTYPES:
        return type(dtype).__module__.startswith("pandas")
    return False


def _is_default_str(dtype: Any) -> bool:
    import pandas as pd

    return (
        isinstance(dtype, pd.StringDtype)
        and dtype.storage == "pyarrow"
        and dtype.na_value is not pd.NA
    )


def _with_freq(index: Any, freq: str) -> Any:
    """``index`` with its ``freq`` set again."""
    import pandas as pd

    if len(index):
        # Rebuilding the range and comparing costs a tenth of what validating the freq in the
        # constructor does (20 ms against 0.2 s for 10 million timestamps).
        make = pd.date_range if isinstance(index, pd.DatetimeIndex) else pd.timedelta_range
        rebuilt = make(index[0], periods=len(index), freq=freq, unit=index.unit, name=index.name)
        if rebuilt.equals(index) and rebuilt.dtype == index.dtype:
            return rebuilt
    return type(index)(index, freq=freq)


def _freqstr(index: pd.Index) -> str | None:
    freq = getattr(index, "freq", None)
    return None if freq is None else str(freq.freqstr)


def _encodable_name(name: Any) -> bool:
    if isinstance(name, tuple):
        return all(_encodable_name(part) for part in name)
    if type(name) is float:
        return math.isfinite(name)
    return type(name) in _NAME_SCALARS


def _encode_name(name: Any) -> Any:
    # JSON keeps str, int, float, bool and None apart; names are hashable, so no name is a
    # list, and lists in the JSON are tuples.
    return list(map(_encode_name, name)) if isinstance(name, tuple) else name


def _decode_name(data: Any) -> Any:
    return tuple(map(_decode_name, data)) if isinstance(data, list) else data


def _json_round_trips(obj: Any) -> bool:
    try:
        return bool(json.loads(json.dumps(obj)) == obj)
    except (TypeError, ValueError):
        return False


# -------------------------------------------------------------------------------------------
# npy
# -------------------------------------------------------------------------------------------


class NumpySerializer(Serializer):
    """numpy arrays (exactly ``ndarray``, not subclasses) of any dtype without objects.

    Written with ``np.save(allow_pickle=False)``; loaded as a copy-on-write memory map, so
    loading is lazy, and a step that changes its input changes its own copy, never the file.
    The loaded value is a plain ``ndarray`` view of the map.
    """

    name = "npy"
    version = "1"
    extension = ".npy"

    def can_dump(self, value: Any) -> bool:
        return _is_class(value, "numpy", "ndarray") and not value.dtype.hasobject

    def dump(self, value: Any, path: Path) -> None:
        import numpy as np

        # A file object, because np.save appends ".npy" to a path that lacks it.
        with open(path, "wb") as fh:
            np.save(fh, value, allow_pickle=False)

    inline = True

    def write(self, value: Any, fh: BinaryIO) -> None:
        import numpy as np

        np.save(fh, value, allow_pickle=False)

    def loads(self, data: bytes) -> Any:
        import io

        import numpy as np

        # A copy, as the memory map is copy-on-write: a step changing it changes its own.
        return np.load(io.BytesIO(data), allow_pickle=False)

    def load(self, path: Path) -> Any:
        import numpy as np

        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except ValueError:
            # An array with no elements has no bytes to map.
            return np.load(path, allow_pickle=False)
        return array.view(np.ndarray)


# -------------------------------------------------------------------------------------------
# joblib
# -------------------------------------------------------------------------------------------


class JoblibSerializer(Serializer):
    """scikit-learn-like estimators, through ``joblib.dump`` (arrays written raw).

    The rule is simple on purpose: a value whose class comes from ``sklearn``, or that has
    callable ``fit`` and ``get_params`` (the estimator protocol: xgboost, lightgbm and user
    estimators built on ``BaseEstimator``). Other objects holding arrays go to cloudpickle,
    which writes large arrays nearly as fast.

    joblib pickles classes and functions by reference; one from ``__main__`` (or registered
    with cloudpickle to pickle by value) could not be found by another process, so the dump
    fails and :func:`dump_with_fallback` moves on to cloudpickle, which pickles it by value.
    Files are loaded whole, not memory-mapped: joblib would keep one open map, with its file
    descriptor, per array.
    """

    name = "joblib"
    version = "1"
    extension = ".joblib"

    def can_dump(self, value: Any) -> bool:
        cls = type(value)
        if cls.__module__.startswith("sklearn."):
            return True
        return callable(getattr(value, "fit", None)) and callable(
            getattr(value, "get_params", None)
        )

    def dump(self, value: Any, path: Path) -> None:
        # A file object, because joblib picks a compressor from a path's extension. A real
        # one: joblib aligns arrays by its position (``HashingWriter`` would need ``tell``).
        with open(path, "wb") as fh:
            _reference_checking_pickler()(fh).dump(value)

    def load(self, path: Path) -> Any:
        import joblib

        return joblib.load(path)


@functools.cache
def _reference_checking_pickler() -> type:
    """joblib's pickler, refusing references another process could not resolve."""
    from joblib.numpy_pickle import NumpyPickler

    class _Pickler(NumpyPickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type | types.FunctionType) and not _importable(obj):
                raise pickle.PicklingError(
                    f"{obj.__module__}.{obj.__qualname__} cannot be imported by another "
                    "process; it has to be pickled by value"
                )
            return NotImplemented

    return _Pickler


def _importable(obj: type | types.FunctionType) -> bool:
    module = getattr(obj, "__module__", None)
    if module is None or module == "__main__" or module not in sys.modules:
        return False
    if "cloudpickle" in sys.modules:
        import cloudpickle

        registered = cloudpickle.list_registry_pickle_by_value()
        if any(module == name or module.startswith(name + ".") for name in registered):
            return False
    return True


# -------------------------------------------------------------------------------------------
# cloudpickle
# -------------------------------------------------------------------------------------------


class CloudpickleSerializer(Serializer):
    """Any picklable object, through cloudpickle, protocol 5 (the fallback)."""

    name = "cloudpickle"
    version = "1"
    extension = ".pkl"

    def can_dump(self, value: Any) -> bool:
        return True

    def dump(self, value: Any, path: Path) -> str:
        import cloudpickle

        with HashingWriter(path) as fh:
            cloudpickle.dump(value, fh, protocol=5)
        return fh.digest

    def load(self, path: Path) -> Any:
        with open(path, "rb") as fh:
            # Only files whose hash matched the index entry get here (DESIGN.md section 7).
            return pickle.load(fh)  # noqa: S301

    inline = True

    def write(self, value: Any, fh: BinaryIO) -> None:
        import cloudpickle

        cloudpickle.dump(value, fh, protocol=5)

    def loads(self, data: bytes) -> Any:
        # Only bytes whose hash matched the index entry get here (DESIGN.md section 7).
        return pickle.loads(data)  # noqa: S301
