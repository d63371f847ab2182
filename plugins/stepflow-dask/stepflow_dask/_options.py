"""The options of ``[tool.stepflow.backends.NAME]`` with ``plugin = "dask"``, checked.

Every mistake is reported when the backend is created, before anything connects or starts,
with the option's name and what it should be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from stepflow.errors import BackendUnavailableError

__all__ = ["DaskOptions", "parse_options"]

#: option → what it is, for the error that lists them
KNOWN = {
    "address": 'the address of a running Dask scheduler ("tcp://HOST:8786")',
    "cluster": 'a cluster class to start ("dask.distributed.LocalCluster")',
    "cluster_options": "keyword arguments of the cluster class",
    "adapt": "true, or keyword arguments of cluster.adapt() (minimum, maximum)",
    "connect_timeout": "seconds to wait for the scheduler (default 10)",
    "probe_timeout": "seconds check() waits for a worker to run its probe (default 120)",
}


@attrs.frozen
class DaskOptions:
    """The checked options of one Dask backend."""

    #: a running scheduler's address (the cluster is someone else's: left running)
    address: str | None = None
    #: ``module.Class`` of a cluster to start (and close at the end of the run)
    cluster: str | None = None
    cluster_options: Mapping[str, Any] = attrs.field(factory=dict)
    #: ``None``: a fixed-size cluster; else the keyword arguments of ``cluster.adapt``
    adapt: Mapping[str, Any] | None = None
    connect_timeout: float = 10.0
    probe_timeout: float = 120.0


def parse_options(name: str, options: Mapping[str, Any]) -> DaskOptions:
    """Check ``options`` of backend ``name``.

    :raises BackendUnavailableError: an unknown option, a wrong type, neither or both of
        ``address`` and ``cluster``; the message names the option and the fix.
    """
    where = f"backend {name!r} (plugin dask)"
    unknown = sorted(set(options) - set(KNOWN))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in KNOWN.items())
        raise BackendUnavailableError(f"{where}: unknown option(s) {unknown}; known: {known}")
    address, cluster = options.get("address"), options.get("cluster")
    if (address is None) == (cluster is None):
        both = "both" if address is not None else "neither"
        raise BackendUnavailableError(
            f"{where} has {both} of address and cluster: give address = "
            f'"tcp://HOST:8786" to use a running scheduler, or cluster = '
            f'"dask.distributed.LocalCluster" (with cluster_options) to let stepflow start one'
        )
    for key in ("address", "cluster"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise BackendUnavailableError(
                f"{where}: {key} must be a non-empty string, not {value!r}"
            )
    if cluster is not None and "." not in cluster.replace(":", "."):
        raise BackendUnavailableError(
            f"{where}: cluster = {cluster!r} must name a class with its module, such as "
            f'"dask.distributed.LocalCluster" or "dask_jobqueue.SLURMCluster"'
        )
    cluster_options = options.get("cluster_options", {})
    if not isinstance(cluster_options, Mapping):
        raise BackendUnavailableError(
            f"{where}: cluster_options must be a table of keyword arguments, not "
            f"{cluster_options!r}"
        )
    adapt = _adapt(where, options.get("adapt", False))
    if address is not None and (cluster_options or adapt is not None):
        given = "cluster_options" if cluster_options else "adapt"
        raise BackendUnavailableError(
            f"{where}: {given} applies to a cluster stepflow starts (cluster = ...), not to "
            f"the scheduler at {address!r}, which whoever started it manages"
        )
    return DaskOptions(
        address=address,
        cluster=cluster,
        cluster_options=dict(cluster_options),
        adapt=adapt,
        connect_timeout=_seconds(where, options, "connect_timeout", 10.0),
        probe_timeout=_seconds(where, options, "probe_timeout", 120.0),
    )


def _adapt(where: str, value: Any) -> Mapping[str, Any] | None:
    if value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise BackendUnavailableError(
        f"{where}: adapt must be true, false or a table such as {{minimum = 0, maximum = 8}}, "
        f"not {value!r}"
    )


def _seconds(where: str, options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BackendUnavailableError(
            f"{where}: {key} must be a number of seconds > 0, not {value!r}"
        )
    return float(value)
