"""A datastore on an object store, through fsspec: ``s3://bucket/prefix`` (tested), and the
``gs://``, ``gcs://``, ``az://`` and ``abfs://`` schemes of gcsfs and adlfs (untested).

Layout under the URL's prefix::

    objects/<2 chars>/<rest>    step outputs, content-addressed and immutable
    refs/<path>                 documents: registry entries, shared cache-index records

Objects are uploaded whole from a finished local file (an S3 PUT, or a multipart upload's
completion, publishes atomically: a reader never sees half an object), and a copy stays in
``<home>/cache/<store id>/objects`` so a load on this machine does not download it again.
Loads are verified against the object's digest elsewhere (``ArtifactIO.load``), so a stale
or damaged copy is a miss, never a wrong answer.

fsspec and the filesystem's package (s3fs for ``s3://``) are imported when a store is
opened, never when stepflow starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stepflow._storage.datastore import (
    ArtifactMissingError,
    Datastore,
    check_doc_path,
    check_name,
)
from stepflow._storage.home import make_private_dirs, replacing
from stepflow.errors import StoreUnavailableError, UsageError

__all__ = ["FsspecDatastore", "open_object_store"]

#: URL scheme → the package that implements it, for the install hint
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}

# botocore's defaults retry a refused connection for about ten seconds, and s3fs retries on
# top; a store that does not answer should fail in seconds, not hang the run.
_S3_CLIENT_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 3, "mode": "standard"},
}

# Exception class names (anywhere in the MRO) that mean "the endpoint did not answer", from
# botocore, aiohttp, asyncio and fsspec; matched by name so none of them is imported here.
_UNREACHABLE = {
    "ConnectionError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "HTTPClientError",
    "ClientConnectorError",
    "ServerTimeoutError",
    "TimeoutError",
    "FSTimeoutError",
}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}

#: filesystems this process has opened, by ``_token``, and the stores it has probed: a
#: worker opens the store for every task, and should pay for a client and a probe once
_FILESYSTEMS: dict[str, Any] = {}
_PROBED: set[str] = set()

#: environment variables that choose credentials; a filesystem made under other values is
#: not reused (fsspec's own instance cache only looks at the options)
_CREDENTIAL_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


def open_object_store(uri: str, *, home: Path, options: Mapping[str, Any]) -> FsspecDatastore:
    """The ``stepflow_datastore_types`` factory for object-store URLs."""
    return FsspecDatastore(uri, home=home, options=options)


class FsspecDatastore(Datastore):
    """Objects and documents in an fsspec filesystem, shared by every home pointed at it.

    :param uri: the store's URL, ``s3://bucket/prefix``.
    :param home: the stepflow home; local copies of objects go under ``<home>/cache``.
    :param options: fsspec storage options (``endpoint_url``, ``key``, ``secret``, ...),
        from ``[tool.stepflow.store_options]``.
    :raises StoreUnavailableError: the bucket is missing, the credentials are rejected, or
        the endpoint does not answer.
    :raises UsageError: the URL has no bucket, or the filesystem's package is not installed.
    """

    shared = True

    def __init__(self, uri: str, *, home: Path, options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.kind = uri.split("://", 1)[0].lower()
        self.options = dict(options or {})
        self._fs = _connect(uri, self.kind, self.options)
        # The scheme in lower case: fsspec strips only the spelling it registered.
        normalized = f"{self.kind}://{uri.split('://', 1)[1]}"
        self._root = str(self._fs._strip_protocol(normalized)).rstrip("/")
        if not self._root:
            raise UsageError(
                f"store {uri!r} names no bucket; write {self.kind}://BUCKET or "
                f"{self.kind}://BUCKET/PREFIX"
            )
        self._bucket = self._root.split("/", 1)[0]
        #: where copies of this store's objects are kept on this machine
        self.cache_dir = Path(home) / "cache" / _store_id(normalized, self.options) / "objects"
        self._probe()

    def __repr__(self) -> str:
        return f"FsspecDatastore({self.uri!r})"

    # --- errors -------------------------------------------------------------------------

    def _where(self) -> str:
        endpoint = self.options.get("endpoint_url") or self.options.get("client_kwargs", {}).get(
            "endpoint_url"
        )
        return f"store {self.uri}" + (f" at {endpoint}" if endpoint else "")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn connection and permission failures into ``StoreUnavailableError``.

        ``FileNotFoundError`` and ``FileExistsError`` pass through: callers decide what a
        missing or existing key means.
        """
        try:
            yield
        except (FileNotFoundError, FileExistsError):
            raise
        except Exception as exc:
            message = _explain(exc, self._where(), doing)
            if message is None:
                raise
            raise StoreUnavailableError(message, store=self.uri) from exc

    def _probe(self) -> None:
        probe = f"{self.uri}\0{_token(self.kind, self.options)}"
        if probe in _PROBED:
            return
        try:
            with self._errors("opening the store"):
                if hasattr(self._fs, "call_s3"):
                    # One HEAD request: tells a missing bucket (404) from refused access (403).
                    self._fs.call_s3("head_bucket", Bucket=self._bucket)
                else:
                    self._fs.info(self._bucket)
        except StoreUnavailableError:
            raise
        except TypeError as exc:
            # s3fs hands unknown options to the client it makes on first use, not to its
            # constructor: a misspelled option shows up here.
            raise UsageError(_bad_options(self.uri, self.kind, exc)) from exc
        except FileNotFoundError:
            raise StoreUnavailableError(
                f"{self._where()}: bucket {self._bucket!r} does not exist; create it (for "
                f"S3: `aws s3 mb s3://{self._bucket}`) or fix `store` in [tool.stepflow] "
                f"(or STEPFLOW_STORE)",
                store=self.uri,
            ) from None
        except Exception as exc:
            # Anything else: a bucket name the client refuses, a redirect to another region...
            raise StoreUnavailableError(
                f"{self._where()}: cannot be opened ({type(exc).__name__}: {exc}); check the "
                f"URL, the bucket's region (store_options client_kwargs = {{ region_name = "
                f'"..." }}) and the credentials',
                store=self.uri,
            ) from exc
        _PROBED.add(probe)

    # --- objects ------------------------------------------------------------------------

    def _remote(self, name: str) -> str:
        check_name(name)
        return f"{self._root}/objects/{name[:2]}/{name[2:]}"

    def _local(self, name: str) -> Path:
        check_name(name)
        return self.cache_dir / name[:2] / name[2:]

    def _local_folder(self, name: str) -> Path:
        folder = self._local(name).parent
        if not folder.is_dir():
            # Owner-only folders all the way down from the home, like the local store's.
            make_private_dirs(folder)
        return folder

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Path]:
        local = self._local(name)
        self._local_folder(name)
        # Only once the upload succeeded does the local copy take the object's name.
        with replacing(local, suffix=local.suffix) as tmp:
            yield tmp
            with self._errors(f"uploading object {name}"):
                self._fs.put_file(str(tmp), self._remote(name))

    def local_path(self, name: str) -> Path:
        """A local copy of the object, downloaded once into ``<home>/cache``.

        The copy is reused when its size matches the stored object's; its bytes are checked
        against the recorded digest by the caller.
        """
        remote_size = self.size(name)
        local = self._local(name)
        with contextlib.suppress(OSError):
            if not local.is_symlink() and local.stat().st_size == remote_size:
                return local
        self._local_folder(name)
        with replacing(local, suffix=local.suffix) as tmp:
            try:
                with self._errors(f"downloading object {name}"):
                    self._fs.get_file(self._remote(name), str(tmp))
            except FileNotFoundError:
                raise ArtifactMissingError(f"object {name} is missing from {self.uri}") from None
            if tmp.stat().st_size != remote_size:
                raise ArtifactMissingError(
                    f"object {name} from {self.uri} arrived truncated or changed while it was "
                    f"downloaded ({tmp.stat().st_size} bytes, expected {remote_size})"
                )
        return local

    def discard_copy(self, name: str) -> bool:
        local = self._local(name)
        existed = local.exists()
        local.unlink(missing_ok=True)
        return existed

    def exists(self, name: str) -> bool:
        with self._errors(f"looking up object {name}"):
            return bool(self._fs.exists(self._remote(name)))

    def size(self, name: str) -> int:
        """The stored object's size (one HEAD request).

        :raises ArtifactMissingError: there is no such object.
        """
        try:
            with self._errors(f"looking up object {name}"):
                info = self._fs.info(self._remote(name))
        except FileNotFoundError:
            raise ArtifactMissingError(f"object {name} is missing from {self.uri}") from None
        return int(info["size"])

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError), self._errors(f"deleting object {name}"):
            self._fs.rm_file(self._remote(name))
        self._local(name).unlink(missing_ok=True)

    def names(self) -> Iterator[str]:
        base = f"{self._root}/objects/"
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError), self._errors("listing objects"):
            found = self._fs.find(base.rstrip("/"))
        for path in sorted(found):
            rest = path[len(base) :] if path.startswith(base) else ""
            folder, _, tail = rest.partition("/")
            name = folder + tail
            # Anything else under objects/ was not written by stepflow; leave it alone.
            if len(folder) == 2 and "/" not in tail and _is_object_name(name):
                yield name

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove partial downloads and uploads left in the local cache by crashed
        processes; returns how many. (Nothing partial is ever left in the object store.)"""
        removed = 0
        cutoff = time.time() - older_than
        if not self.cache_dir.is_dir():
            return 0
        for tmp in self.cache_dir.glob("*/.tmp-*"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    # --- documents ----------------------------------------------------------------------

    def _doc(self, path: str) -> str:
        return f"{self._root}/refs/{check_doc_path(path)}"

    def put_doc(
        self, path: str, data: bytes, *, exclusive: bool = False, sync: bool = True
    ) -> bool:
        """Write document ``path`` with one PUT (atomic: readers see the old or the new).

        With ``exclusive``, an existing document is never overwritten, and ``False`` is
        returned. On S3 the write carries ``If-None-Match: *``, so the server rejects it
        when the document exists, even when two writers race: exactly one wins. A server
        that ignores that header (older MinIO or Ceph releases, for example) still gets the
        existence check made just before the write, but two writers racing within that
        window can then both succeed, the later one overwriting. Other filesystems get
        fsspec's ``mode="create"``, which is that same check-then-write unless the
        filesystem implements it natively.
        """
        target = self._doc(path)
        with self._errors(f"writing document {path}"):
            if not exclusive:
                self._fs.pipe_file(target, data)
                return True
            if self._fs.exists(target):
                return False
            try:
                self._fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                return False
        return True

    def get_doc(self, path: str) -> bytes | None:
        target = self._doc(path)
        try:
            with self._errors(f"reading document {path}"):
                return bytes(self._fs.cat_file(target))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def list_docs(self, prefix: str) -> list[str]:
        base = f"{self._root}/refs"
        inner = prefix.strip("/")
        folder = f"{base}/{check_doc_path(inner)}" if inner else base
        found: list[str] = []
        doing = f"listing documents in {prefix!r}"
        with contextlib.suppress(FileNotFoundError), self._errors(doing):
            found = self._fs.find(folder)
        start = folder + "/"
        paths = []
        for path in found:
            if path.startswith(start):
                relative = path[len(base) + 1 :]
                with contextlib.suppress(ValueError):
                    paths.append(check_doc_path(relative))
        return sorted(paths)

    def delete_doc(self, path: str) -> None:
        target = self._doc(path)
        with contextlib.suppress(FileNotFoundError), self._errors(f"deleting document {path}"):
            self._fs.rm_file(target)

    def close(self) -> None:
        # The fsspec filesystem is cached and shared by every store opened on the same URL
        # and options in this process; its connections are closed when the process exits.
        return None


def _is_object_name(name: str) -> bool:
    try:
        check_name(name)
    except ArtifactMissingError:
        return False
    return True


def _store_id(uri: str, options: Mapping[str, Any]) -> str:
    """A folder name for this store's local copies: the same bucket behind two endpoints is
    two stores."""
    endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get(
        "endpoint_url", ""
    )
    digest = hashlib.sha256(f"{uri}\0{endpoint}".encode()).hexdigest()[:16]
    return f"{uri.split('://', 1)[0].lower()}-{digest}"


def _token(kind: str, options: Mapping[str, Any]) -> str:
    """What identifies an opened filesystem: scheme, options, credential variables, and the
    process (a forked child must not share its parent's connections)."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_CREDENTIAL_ENV_PREFIXES))
    return json.dumps([kind, options, env, os.getpid()], sort_keys=True, default=repr)


def _connect(uri: str, kind: str, options: dict[str, Any]) -> Any:
    """The fsspec filesystem for ``uri``'s scheme and ``options`` (made once per ``_token``)."""
    token = _token(kind, options)
    if token in _FILESYSTEMS:
        return _FILESYSTEMS[token]
    try:
        import fsspec.core
    except ImportError:
        raise UsageError(
            f"store {uri!r} needs fsspec; install it with `pip install 'stepflow[s3]'`"
        ) from None
    kwargs = dict(options)
    # Listings must be fresh: another process or machine may have just written or pruned.
    kwargs.setdefault("use_listings_cache", False)
    kwargs["skip_instance_cache"] = True  # cached here instead, see _token
    if kind == "s3":
        config = dict(_S3_CLIENT_CONFIG)
        config.update(kwargs.get("config_kwargs") or {})
        kwargs["config_kwargs"] = config
    package = _PACKAGES.get(kind, kind)
    try:
        fs, _ = fsspec.core.url_to_fs(uri, **kwargs)
    except ImportError as exc:
        extra = " (or `pip install 'stepflow[s3]'`)" if kind == "s3" else ""
        raise UsageError(
            f"store {uri!r} needs the {package} package: install it with "
            f"`pip install {package}`{extra} ({exc})"
        ) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(_bad_options(uri, kind, exc)) from None
    _FILESYSTEMS[token] = fs
    return fs


def _bad_options(uri: str, kind: str, exc: Exception) -> str:
    return (
        f"store {uri!r}: the options in [tool.stepflow.store_options] are not accepted by "
        f"{_PACKAGES.get(kind, kind)} ({exc}); see its documentation for the storage options"
    )


def _explain(exc: BaseException, where: str, doing: str) -> str | None:
    """A message saying what went wrong with the store and how to fix it, or ``None`` when
    ``exc`` is not a store availability problem."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = f"{type(exc).__name__}: {exc}"
    if names & _NO_CREDENTIALS:
        return (
            f"{where}: no credentials found while {doing}; set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or `key` and `secret` in "
            f"[tool.stepflow.store_options] ({detail})"
        )
    if isinstance(exc, PermissionError):
        return (
            f"{where}: access denied while {doing}; the credentials are wrong or lack "
            f"permission on the bucket. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
            f"AWS_PROFILE, or `key` and `secret` in [tool.stepflow.store_options]) ({detail})"
        )
    if names & _UNREACHABLE:
        return (
            f"{where}: the endpoint did not answer while {doing}; check that the server is "
            f"running and that `endpoint_url` in [tool.stepflow.store_options] is right "
            f"({detail})"
        )
    return None
