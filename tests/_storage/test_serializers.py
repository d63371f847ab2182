"""Tests for stepflow._storage.serializers: file round trips, selection order and fallback."""

from __future__ import annotations

import datetime
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stepflow._storage.hashing import hash_file
from stepflow._storage.serializers import (
    CloudpickleSerializer,
    JoblibSerializer,
    NumpySerializer,
    ParquetSerializer,
    SerializationError,
    Serializer,
    builtin_serializers,
    dump_with_fallback,
    select_serializer,
)
from stepflow.errors import StepflowError


def round_trip(serializer, value, tmp_path):
    path = tmp_path / f"artifact{serializer.extension}"
    serializer.dump(value, path)
    return serializer.load(path)


def _with_attrs(frame, **attrs):
    frame.attrs.update(attrs)
    return frame


N = 4
STORED_FRAMES = {
    "numbers": pd.DataFrame(
        {
            "i64": np.arange(N),
            "i8": np.arange(N, dtype="int8"),
            "u64": np.array([0, 1, 2, 2**64 - 1], dtype="uint64"),
            "f64": [1.5, np.nan, -0.0, np.inf],
            "f32": np.arange(N, dtype="float32"),
            "f16": np.arange(N, dtype="float16"),
            "b": [True, False, True, False],
        }
    ),
    "column order": pd.DataFrame({"z": [1], "a": [2.0], "m": [True]}),
    "datetimes": pd.DataFrame(
        {
            "ns": pd.date_range("2020-01-01", periods=N).as_unit("ns"),
            "us": pd.date_range("2020-01-01", periods=N).as_unit("us"),
            "ms": pd.date_range("2020-01-01", periods=N).as_unit("ms"),
            "nat": pd.to_datetime(["2020-01-01", None, "2021-06-01", None]).as_unit("us"),
            "paris": pd.date_range("2020-03-28", periods=N, freq="h", tz="Europe/Paris"),
            "utc": pd.date_range("2020-01-01", periods=N, tz="UTC").as_unit("ns"),
            "fixed": pd.date_range(
                "2020-01-01", periods=N, tz=datetime.timezone(datetime.timedelta(hours=5))
            ),
            "td": pd.to_timedelta([1, 2, None, 4], unit="s"),
        }
    ),
    "categories": pd.DataFrame(
        {
            "plain": pd.Categorical(["x", "y", "x", None]),
            "ordered": pd.Categorical(["lo", "hi", "lo", "hi"], ["lo", "hi"], ordered=True),
            "unused": pd.Categorical(["x", "y", "x", "y"], categories=["w", "y", "x", "z"]),
        }
    ),
    "strings": pd.DataFrame(
        {
            "str": ["a", None, "ccc", ""],
            "string": pd.array(["a", None, "b", "c"], dtype="string[pyarrow]"),
        }
    ),
    "nullable": pd.DataFrame(
        {
            "Int64": pd.array([1, None, 3, 4], dtype="Int64"),
            "UInt8": pd.array([1, None, 3, 255], dtype="UInt8"),
            "Float64": pd.array([1.5, None, 3.0, 4.0], dtype="Float64"),
            "boolean": pd.array([True, None, False, True], dtype="boolean"),
        }
    ),
    "range index": pd.DataFrame({"a": [1, 2, 3]}, index=pd.RangeIndex(10, 16, 2, name="r")),
    "named index": pd.DataFrame({"a": [1, 2]}, index=pd.Index([5, 7], name="key")),
    "index named like a column": pd.DataFrame({"a": [1, 2]}, index=pd.Index([5, 7], name="a")),
    "str index": pd.DataFrame({"a": [1, 2]}, index=["p", "q"]),
    "float index": pd.DataFrame({"a": [1, 2]}, index=[0.5, 1.5]),
    "multiindex": pd.DataFrame(
        {"a": [1, 2, 3]},
        index=pd.MultiIndex.from_arrays(
            [["x", "y", "y"], [1, 2, 3], pd.to_datetime(["2020-01-02", "2020-01-01", None])],
            names=["s", None, "t"],
        ),
    ),
    "datetime index with tz and freq": pd.DataFrame(
        {"a": [1, 2, 3]}, index=pd.date_range("2020-01-01", periods=3, tz="Asia/Tokyo", name="t")
    ),
    "datetime index without freq": pd.DataFrame(
        {"a": [1, 2]}, index=pd.DatetimeIndex(["2020-01-01", "2020-03-01"]).as_unit("ns")
    ),
    "timedelta index with freq": pd.DataFrame(
        {"a": [1, 2]}, index=pd.timedelta_range(0, periods=2, freq="h")
    ),
    "categorical index": pd.DataFrame(
        {"a": [1, 2]}, index=pd.CategoricalIndex(["x", "y"], categories=["y", "x", "z"])
    ),
    "columns axis name": pd.DataFrame({"a": [1]}).rename_axis(columns="features"),
    "attrs": _with_attrs(pd.DataFrame({"a": [1]}), source="s3://bucket", version=2),
    # Columns without nulls are written as required (no definition levels): every kind once.
    "nothing missing": pd.DataFrame(
        {
            "f64": [1.5, -0.0, np.inf, 2.0],
            "Int64": pd.array([1, 2, 3, 4], dtype="Int64"),
            "Float64": pd.array([1.5, 2.0, 3.0, 4.0], dtype="Float64"),
            "boolean": pd.array([True, False, False, True], dtype="boolean"),
            "str": ["a", "b", "", "d"],
            "string": pd.array(["a", "b", "c", "d"], dtype="string[pyarrow]"),
            "cat": pd.Categorical(["x", "y", "x", "y"], categories=["y", "x", "z"]),
            "paris": pd.date_range("2020-03-28", periods=N, freq="h", tz="Europe/Paris"),
            "td": pd.to_timedelta([1, 2, 3, 4], unit="s"),
        },
        index=pd.MultiIndex.from_arrays(
            [["x", "y", "y", "z"], pd.to_datetime(["2020-01-02", "2020-01-01"] * 2)],
            names=["s", "t"],
        ),
    ),
    "no columns": pd.DataFrame(),
    "no rows": pd.DataFrame({"a": pd.Series([], dtype="float64"), "s": pd.Series([], dtype=str)}),
}

REFUSED_FRAMES = {
    "int column names": pd.DataFrame({0: [1], 1: [2]}),
    "mixed column names": pd.DataFrame({0: [1], "b": [2]}),
    "duplicate column names": pd.DataFrame([[1, 2]], columns=["a", "a"]),
    "multiindex columns": pd.DataFrame(
        [[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])
    ),
    "mixed object column": pd.DataFrame({"a": pd.Series([1, "x"], dtype=object)}),
    "object ints": pd.DataFrame({"a": pd.Series([1, 2], dtype=object)}),
    "seconds datetimes": pd.DataFrame({"a": pd.date_range("2020", periods=2).as_unit("s")}),
    "seconds datetime index": pd.DataFrame(
        {"a": [1]}, index=pd.DatetimeIndex(["2020-01-01"]).as_unit("s")
    ),
    "python strings": pd.DataFrame({"a": pd.array(["x", None], dtype="string[python]")}),
    "categories of ints": pd.DataFrame({"a": pd.Categorical([1, 2, 1])}),
    "categorical without rows": pd.DataFrame({"a": pd.Categorical([], categories=["x"])}),
    "periods": pd.DataFrame({"a": pd.period_range("2020", periods=2, freq="M")}),
    "sparse": pd.DataFrame({"a": pd.arrays.SparseArray([0, 0, 1])}),
    "complex": pd.DataFrame({"a": np.array([1j, 2])}),
    "multiindex level with freq": pd.DataFrame(
        {"a": [1, 2]},
        index=pd.MultiIndex.from_arrays([["x", "y"], pd.date_range("2020", periods=2, tz="UTC")]),
    ),
    "nullable index": pd.DataFrame({"a": [1, 2]}, index=pd.Index([1, None], dtype="Int64")),
    "int index name": pd.DataFrame({"a": [1, 2]}, index=pd.Index([1, 2], name=0)),
    "attrs beyond JSON": _with_attrs(pd.DataFrame({"a": [1]}), ids={1, 2}),
    "no duplicate labels flag": pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=False),
}


class TestParquetSerializer:
    """ParquetSerializer: exact round trips of DataFrames and Series, pickle for the rest."""

    @pytest.mark.parametrize("frame", STORED_FRAMES.values(), ids=STORED_FRAMES.keys())
    def test_round_trip_is_exact(self, frame, tmp_path):
        """Dtypes, index, column order and attrs come back exactly as they were."""
        serializer = ParquetSerializer()
        assert serializer.can_dump(frame)
        loaded = round_trip(serializer, frame, tmp_path)
        pd.testing.assert_frame_equal(loaded, frame, check_exact=True)
        assert type(loaded.index) is type(frame.index)
        assert loaded.attrs == frame.attrs

    @pytest.mark.parametrize("frame", REFUSED_FRAMES.values(), ids=REFUSED_FRAMES.keys())
    def test_refuses_what_parquet_would_change(self, frame, tmp_path):
        """A frame Parquet would not give back exactly is left to cloudpickle, which does."""
        assert not ParquetSerializer().can_dump(frame)
        path = tmp_path / "artifact"
        serializer = dump_with_fallback(frame, path, builtin_serializers())
        assert serializer.name == "cloudpickle"
        pd.testing.assert_frame_equal(serializer.load(path), frame, check_exact=True)

    @pytest.mark.parametrize(
        "name", [None, "price", "", 0, 7, 1.5, True, ("a", 1), ("a", ("b", None))]
    )
    def test_series_name_restored(self, name, tmp_path):
        """A Series comes back a Series, with its name, of the same type, whatever it is."""
        series = pd.Series([1.0, 2.5, None], name=name, index=pd.Index(["x", "y", "z"], name="k"))
        serializer = ParquetSerializer()
        assert serializer.can_dump(series)
        loaded = round_trip(serializer, series, tmp_path)
        pd.testing.assert_series_equal(loaded, series, check_exact=True)
        assert type(loaded.name) is type(name)

    def test_series_with_datetime_index_and_attrs(self, tmp_path):
        """A tz-aware Series keeps its DatetimeIndex's freq and its attrs."""
        series = pd.Series(
            pd.date_range("2021-01-01", periods=3, tz="UTC"),
            index=pd.date_range("2020-01-01", periods=3, freq="W-MON", name="when"),
            name="ts",
        )
        series.attrs["unit"] = "day"
        loaded = round_trip(ParquetSerializer(), series, tmp_path)
        pd.testing.assert_series_equal(loaded, series, check_exact=True)
        assert loaded.index.freq == series.index.freq
        assert loaded.attrs == {"unit": "day"}

    def test_series_refused_when_a_name_cannot_be_written(self):
        """A Series named by a numpy scalar or NaN, or with a clashing index name, is refused."""
        serializer = ParquetSerializer()
        assert not serializer.can_dump(pd.Series([1], name=np.int64(3)))
        assert not serializer.can_dump(pd.Series([1], name=float("nan")))
        assert not serializer.can_dump(
            pd.Series([1], index=pd.Index([0], name="__stepflow_series__"))
        )

    def test_loaded_frame_is_writable(self, tmp_path):
        """A step may change the frame it was given in place."""
        frame = pd.DataFrame({"a": np.arange(3.0), "b": np.arange(3)})
        loaded = round_trip(ParquetSerializer(), frame, tmp_path)
        loaded.iloc[0, 0] = 42.0
        loaded["b"] += 1
        assert loaded["a"].tolist() == [42.0, 1.0, 2.0]
        assert loaded["b"].tolist() == [1, 2, 3]

    def test_columns_without_nulls_are_required(self, tmp_path):
        """Only columns with a missing value are written as nullable (the faster form for the
        rest); NaN in a float column is kept as a value, not turned into a null. The frame
        comes back exactly, across several row groups and write batches."""
        import pyarrow.parquet as pq

        rows = 2_500_000
        full = np.arange(rows, dtype="float64")
        nans = full.copy()
        nans[-1] = np.nan  # in the last row group only
        ints = pd.array(np.arange(rows), dtype="Int64")
        holes = ints.copy()
        holes[-1] = pd.NA
        frame = pd.DataFrame(
            {"full": full, "nans": nans, "ints": ints, "holes": holes},
            index=pd.Index(np.arange(rows) * 2, name="k"),
        )
        path = tmp_path / "frame.parquet"
        ParquetSerializer().dump(frame, path)
        table = pq.read_table(path)
        assert {f.name: f.nullable for f in table.schema} == {
            "full": False,
            "nans": False,
            "ints": False,
            "holes": True,
            "k": False,
        }
        assert table.column("nans").null_count == 0 and table.column("holes").null_count == 1
        assert pq.ParquetFile(path).metadata.num_row_groups > 1
        loaded = ParquetSerializer().load(path)
        pd.testing.assert_frame_equal(loaded, frame, check_exact=True)
        assert np.isnan(loaded["nans"].iloc[-1]) and loaded["holes"].iloc[-1] is pd.NA

    def test_reads_files_with_nulls_for_nan(self, tmp_path):
        """Files written before NaN was kept as NaN (nulls, nullable fields) load the same."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from stepflow._storage.serializers import _META_KEY

        frame = STORED_FRAMES["numbers"]
        path = tmp_path / "old.parquet"
        table = pa.Table.from_pandas(frame, preserve_index=None)
        metadata = {**table.schema.metadata, _META_KEY: b'{"kind": "DataFrame", "freq": null}'}
        pq.write_table(table.replace_schema_metadata(metadata), path, compression=None)
        assert pq.read_table(path).column("f64").null_count == 1
        loaded = ParquetSerializer().load(path)
        pd.testing.assert_frame_equal(loaded, frame, check_exact=True)

    def test_same_table_as_pyarrow_makes(self, tmp_path):
        """Apart from NaN kept as NaN, the table written is the one ``from_pandas`` makes:
        same schema and pandas metadata, same values (index named like a column included,
        which takes pyarrow's own path)."""
        import pyarrow as pa

        from stepflow._storage.serializers import _arrow_table

        for name, frame in STORED_FRAMES.items():
            expected = pa.Table.from_pandas(frame, preserve_index=None)
            made = _arrow_table(frame)
            assert made.schema.equals(expected.schema, check_metadata=True), name
            assert made.to_pandas().equals(expected.to_pandas()), name

    def test_same_frame_same_bytes(self, tmp_path):
        """Dumping equal frames twice gives identical files, so early cutoff can see them."""
        frame = STORED_FRAMES["categories"]
        serializer = ParquetSerializer()
        serializer.dump(frame, tmp_path / "one")
        serializer.dump(frame.copy(), tmp_path / "two")
        assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()

    def test_ignores_lookalikes(self):
        """Only pandas's own DataFrame and Series are accepted, not classes named alike."""

        class DataFrame:
            pass

        class Frame(pd.DataFrame):
            pass

        serializer = ParquetSerializer()
        assert not serializer.can_dump(DataFrame())
        assert not serializer.can_dump(Frame({"a": [1]}))
        assert not serializer.can_dump({"a": [1]})

    def test_refuses_frames_without_pyarrow(self):
        """Without pyarrow, frames go to pickle instead of failing."""
        code = (
            "import sys; sys.modules['pyarrow'] = None\n"
            "import pandas as pd\n"
            "from stepflow._storage import serializers as s\n"
            "frame = pd.DataFrame({'a': [1.0]})\n"
            "assert not s.ParquetSerializer().can_dump(frame)\n"
            "assert s.select_serializer(frame, s.builtin_serializers()).name == 'cloudpickle'\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


class TestNumpySerializer:
    """NumpySerializer: non-object arrays, loaded as copy-on-write memory maps."""

    ARRAYS = {
        "float64 2d": np.random.default_rng(0).random((50, 4)),
        "nan and signed zero": np.array([np.nan, -0.0, 0.0, np.inf]),
        "int8": np.arange(-5, 5, dtype="int8"),
        "bool": np.array([True, False]),
        "fortran order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "non-contiguous view": np.arange(20)[::3],
        "big-endian": np.arange(4, dtype=">i4"),
        "datetime64": np.array(["2020-01-01", "NaT"], dtype="datetime64[s]"),
        "unicode": np.array(["a", "bcd"]),
        "structured": np.array([(1, 2.0)], dtype=[("x", "i4"), ("y", "f8")]),
        "zero-d": np.array(3.5),
        "empty": np.empty((0, 3)),
    }

    @pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
    def test_round_trip(self, array, tmp_path):
        """Values, dtype, shape and memory order come back, as a plain ndarray."""
        serializer = NumpySerializer()
        assert serializer.can_dump(array)
        loaded = round_trip(serializer, array, tmp_path)
        assert type(loaded) is np.ndarray
        assert loaded.dtype == array.dtype
        assert loaded.shape == array.shape
        if array.flags.f_contiguous and not array.flags.c_contiguous:
            assert loaded.flags.f_contiguous
        np.testing.assert_array_equal(loaded, array)

    def test_mutating_the_loaded_array_leaves_the_file(self, tmp_path):
        """The map is copy-on-write: a step changing its input never changes the stored file."""
        serializer = NumpySerializer()
        path = tmp_path / "artifact.npy"
        serializer.dump(np.zeros(1000), path)
        before = path.read_bytes()
        path.chmod(0o400)  # as a store may keep its objects
        loaded = serializer.load(path)
        loaded[:] = 7.0
        assert loaded.sum() == 7000.0
        assert path.read_bytes() == before
        assert serializer.load(path).sum() == 0.0

    def test_writes_exactly_the_given_path(self, tmp_path):
        """np.save would add ".npy" to a temporary name; the file lands at the path given."""
        path = tmp_path / ".tmp-artifact"
        NumpySerializer().dump(np.arange(3), path)
        assert [p.name for p in tmp_path.iterdir()] == [".tmp-artifact"]

    def test_same_array_same_bytes(self, tmp_path):
        """Dumping equal arrays twice gives identical files."""
        serializer = NumpySerializer()
        serializer.dump(np.arange(10.0), tmp_path / "one")
        serializer.dump(np.arange(10.0), tmp_path / "two")
        assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()

    def test_refuses_objects_and_subclasses(self):
        """Object arrays, masked arrays, matrices, scalars and lists are not for np.save."""
        serializer = NumpySerializer()
        assert not serializer.can_dump(np.array([1, "a"], dtype=object))
        assert not serializer.can_dump(np.array([(1, None)], dtype=[("x", "i4"), ("o", "O")]))
        assert not serializer.can_dump(np.ma.masked_array([1, 2], mask=[0, 1]))
        assert not serializer.can_dump(np.float64(1.0))
        assert not serializer.can_dump([1.0, 2.0])


class Estimator:
    """A user estimator: the protocol, without sklearn."""

    def __init__(self, scale=1.0):
        self.scale = scale
        self.coef_ = None

    def get_params(self, deep=True):
        return {"scale": self.scale}

    def fit(self, x, y=None):
        self.coef_ = np.asarray(x).mean(axis=0) * self.scale
        return self


class TestJoblibSerializer:
    """JoblibSerializer: scikit-learn-like estimators through joblib."""

    def test_sklearn_estimator_round_trip(self, tmp_path):
        """A fitted scikit-learn pipeline predicts the same after a round trip."""
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rng = np.random.default_rng(0)
        x, y = rng.random((100, 3)), rng.random(100)
        model = make_pipeline(StandardScaler(), LinearRegression()).fit(x, y)
        assert select_serializer(model, builtin_serializers()).name == "joblib"
        loaded = round_trip(JoblibSerializer(), model, tmp_path)
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    def test_accepts_the_estimator_protocol(self, tmp_path):
        """An object with fit and get_params is stored by joblib, its arrays intact."""
        model = Estimator(2.0).fit(np.arange(6.0).reshape(3, 2))
        assert JoblibSerializer().can_dump(model)
        loaded = round_trip(JoblibSerializer(), model, tmp_path)
        np.testing.assert_array_equal(loaded.coef_, model.coef_)

    def test_refuses_plain_data(self):
        """Dicts, arrays and objects without the estimator protocol are not joblib's."""
        serializer = JoblibSerializer()
        assert not serializer.can_dump({"fit": 1})
        assert not serializer.can_dump(np.arange(3))
        assert not serializer.can_dump(threading.Lock())

    def test_main_classes_fall_back_to_cloudpickle(self, tmp_path):
        """An estimator class from __main__ is pickled by value by cloudpickle instead."""
        main_estimator = type("MainEstimator", (Estimator,), {"__module__": "__main__"})
        model = main_estimator(3.0).fit(np.ones((2, 2)))
        path = tmp_path / "artifact"
        with pytest.raises(pickle.PicklingError, match=r"__main__\.MainEstimator"):
            JoblibSerializer().dump(model, path)
        serializer = dump_with_fallback(model, path, builtin_serializers())
        assert serializer.name == "cloudpickle"
        np.testing.assert_array_equal(serializer.load(path).coef_, model.coef_)

    def test_compression_suffix_is_not_obeyed(self, tmp_path):
        """A path ending in .gz still gets a plain, uncompressed joblib file."""
        path = tmp_path / "artifact.gz"
        JoblibSerializer().dump(Estimator(), path)
        assert path.read_bytes()[:1] == b"\x80"  # a pickle protocol header, not gzip's magic
        assert JoblibSerializer().load(path).scale == 1.0


class TestCloudpickleSerializer:
    """CloudpickleSerializer: the fallback for anything picklable."""

    def test_accepts_anything(self):
        """can_dump is always true, even for values it will fail to pickle."""
        serializer = CloudpickleSerializer()
        assert serializer.can_dump(object())
        assert serializer.can_dump(threading.Lock())

    def test_round_trips_closures_and_data(self, tmp_path):
        """Plain data and closures come back working."""
        offset = 3
        value = {"items": [1, 2.5, None, ("t",)], "add": lambda x: x + offset}
        loaded = round_trip(CloudpickleSerializer(), value, tmp_path)
        assert loaded["items"] == value["items"]
        assert loaded["add"](1) == 4

    @pytest.mark.parametrize(
        "value",
        [
            7,
            {"array": np.arange(3_000_000.0)},  # large buffers reach the file unframed
            {"strided": np.ones((300, 300))[:, ::3]},
            [bytearray(b"y" * (1 << 20)), b"z" * 300_000],
        ],
        ids=["small", "large-array", "strided-array", "large-bytes"],
    )
    def test_returns_the_digest_of_what_it_wrote(self, tmp_path, value):
        """The digest it returns spares reading the object back, so it must be exact."""
        path = tmp_path / "value.pkl"
        assert CloudpickleSerializer().dump(value, path) == hash_file(path)


class JsonDicts(Serializer):
    """A user serializer for dicts, to test priority."""

    name = "json"
    extension = ".json"

    def can_dump(self, value):
        return type(value) is dict

    def dump(self, value, path):
        import json

        Path(path).write_text(json.dumps(value))

    def load(self, path):
        import json

        return json.loads(Path(path).read_text())


class Failing(Serializer):
    """Accepts everything, writes half a file and fails."""

    name = "failing"

    def __init__(self, exc=None):
        self.exc = exc if exc is not None else ValueError("disk says no")

    def can_dump(self, value):
        return True

    def dump(self, value, path):
        Path(path).write_bytes(b"partial")
        raise self.exc


class TestSelectSerializer:
    """select_serializer: the first serializer that accepts a value wins."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (pd.DataFrame({"a": [1.0]}), "parquet"),
            (pd.Series([1.0]), "parquet"),
            (np.arange(3), "npy"),
            (np.array([None]), "cloudpickle"),
            (Estimator(), "joblib"),
            ({"a": 1}, "cloudpickle"),
            (pd.DataFrame({0: [1]}), "cloudpickle"),
        ],
        ids=["frame", "series", "array", "object array", "estimator", "dict", "int columns"],
    )
    def test_builtin_order(self, value, expected):
        """Parquet, then npy, then joblib, then cloudpickle."""
        serializers = builtin_serializers()
        assert [s.name for s in serializers] == ["parquet", "npy", "joblib", "cloudpickle"]
        assert select_serializer(value, serializers).name == expected

    def test_user_serializer_first_wins(self, tmp_path):
        """A plugin serializer placed before the built-ins takes the values it accepts."""
        serializers = [JsonDicts(), *builtin_serializers()]
        assert select_serializer({"a": 1}, serializers).name == "json"
        assert select_serializer([1], serializers).name == "cloudpickle"
        path = tmp_path / "artifact"
        assert dump_with_fallback({"a": 1}, path, serializers).name == "json"
        assert path.read_text() == '{"a": 1}'

    def test_none_accepts(self):
        """With no serializer accepting the value, the error names its type."""
        with pytest.raises(SerializationError, match=r"builtins\.list"):
            select_serializer([1], [JsonDicts()])


class TestDumpWithFallback:
    """dump_with_fallback: a failing dump leaves no file and the next serializer tries."""

    def test_failed_dump_falls_through(self, tmp_path):
        """The partial file is removed before the next serializer writes."""
        path = tmp_path / "artifact"
        serializer = dump_with_fallback([1, 2], path, [Failing(), CloudpickleSerializer()])
        assert serializer.name == "cloudpickle"
        assert CloudpickleSerializer().load(path) == [1, 2]

    def test_mixed_column_parquet_failure_ends_in_cloudpickle(self, tmp_path):
        """When pyarrow cannot convert a column of ints and strs, cloudpickle stores the frame."""

        class EagerParquet(ParquetSerializer):
            def can_dump(self, value):
                return isinstance(value, pd.DataFrame)

        frame = pd.DataFrame({"a": pd.Series([1, "x", 2.5], dtype=object), "b": [1, 2, 3]})
        path = tmp_path / "artifact"
        serializer = dump_with_fallback(frame, path, [EagerParquet(), *builtin_serializers()])
        assert serializer.name == "cloudpickle"
        pd.testing.assert_frame_equal(serializer.load(path), frame, check_exact=True)

    @pytest.mark.parametrize(
        ("value", "type_name"),
        [((i for i in range(3)), "generator"), (threading.Lock(), "lock")],
        ids=["generator", "lock"],
    )
    def test_unpicklable_value(self, value, type_name, tmp_path):
        """The error names the type, each failure, and what to do; no file is left."""
        path = tmp_path / "artifact"
        with pytest.raises(SerializationError) as excinfo:
            dump_with_fallback(value, path, builtin_serializers())
        error = excinfo.value
        assert isinstance(error, TypeError)
        assert isinstance(error, StepflowError)
        assert error.value_type is type(value)
        assert [name for name, _ in error.failures] == ["cloudpickle"]
        message = str(error)
        assert type_name in message
        assert "cloudpickle:" in message
        assert "Return plain data" in message
        assert "stepflow_serializer_types" in message
        assert not path.exists()

    def test_interrupt_removes_partial_file(self, tmp_path):
        """Ctrl-C during a dump propagates and leaves no partial file."""
        path = tmp_path / "artifact"
        with pytest.raises(KeyboardInterrupt):
            dump_with_fallback(1, path, [Failing(KeyboardInterrupt()), CloudpickleSerializer()])
        assert not path.exists()


class TestImports:
    """Importing and selecting must not import the heavy libraries."""

    def test_import_is_light(self):
        """Importing the module and choosing a serializer for plain data imports no pandas."""
        code = (
            "import sys\n"
            "from stepflow._storage.serializers import builtin_serializers, select_serializer\n"
            "assert select_serializer({'a': 1}, builtin_serializers()).name == 'cloudpickle'\n"
            "heavy = {'pandas', 'numpy', 'pyarrow', 'joblib'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
