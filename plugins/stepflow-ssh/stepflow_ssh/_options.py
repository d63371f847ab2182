"""The options of ``[tool.stepflow.backends.NAME]`` with ``plugin = "ssh"``, checked."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import attrs

from stepflow.errors import BackendUnavailableError

__all__ = ["SSHOptions", "parse_options"]

_DEVICE_RE = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


@attrs.frozen
class SSHOptions:
    """One SSH backend's configuration."""

    #: a host name, an address or a ``~/.ssh/config`` name
    host: str
    user: str | None = None
    port: int | None = None
    #: a private key file (``ssh -i``)
    identity: str | None = None
    #: the remote interpreter: with stepflow installed, or the base of a bootstrapped venv
    python: str = "python3"
    #: make a virtualenv in ``workdir`` with this stepflow (and the step's requirements)
    bootstrap: bool = False
    #: the bootstrapped venv also sees the base interpreter's packages
    system_site_packages: bool = False
    #: a stepflow wheel to bootstrap with, instead of one built from the local stepflow
    wheel: str | None = None
    workdir: str = "~/.stepflow-remote"
    #: the device ids the host lends to steps with ``resources={"gpus": n}``
    gpus: tuple[str, ...] = ()
    host_key_policy: str = "strict"
    connect_timeout: float = 10.0
    #: extra ``ssh -o`` options (``Name=value``), after stepflow's own (which win)
    ssh_options: tuple[str, ...] = ()
    #: variables every step gets on the host
    environment: Mapping[str, str] = attrs.field(factory=dict)
    #: names of local environment variables passed on to steps (in the owner-only task file)
    forward_env: tuple[str, ...] = ()
    #: seconds an attempt runs on after its run stopped following it, before it is killed
    orphan_timeout: float = 120.0
    #: seconds spent reconnecting after a dropped connection before the step is lost
    reconnect_timeout: float = 60.0


_FIELDS = [f.name for f in attrs.fields(SSHOptions)]


def parse_options(name: str, options: Mapping[str, Any]) -> SSHOptions:
    """Check the table of backend ``name``; every bad value is an error naming the option.

    :raises BackendUnavailableError: a missing, unknown or invalid option.
    """
    where = f"[tool.stepflow.backends.{name}]"

    def bad(option: str, why: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"{where}: option {option} {why}")

    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise BackendUnavailableError(
            f"{where}: unknown option {', '.join(hints)}; the ssh backend takes "
            f"{', '.join(_FIELDS)}"
        )
    host = options.get("host")
    if not isinstance(host, str) or not host.strip() or host.startswith("-"):
        raise bad("host", f'= {host!r} must name a host (host = "gpu1.internal")')
    kw: dict[str, Any] = {"host": host}
    for key in ("user", "identity", "python", "wheel", "workdir"):
        if key in options:
            value = options[key]
            if not isinstance(value, str) or not value or "\0" in value:
                raise bad(key, f"= {value!r} must be a non-empty string")
            if key == "user" and value.startswith("-"):
                raise bad(key, f"= {value!r} is not a user name")
            kw[key] = value
    if "port" in options:
        port = options["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise bad("port", f"= {port!r} must be a port number (1 to 65535)")
        kw["port"] = port
    for key in ("bootstrap", "system_site_packages"):
        if key in options:
            if not isinstance(options[key], bool):
                raise bad(key, f"= {options[key]!r} must be true or false")
            kw[key] = options[key]
    if "gpus" in options:
        gpus = options["gpus"]
        if not isinstance(gpus, list) or not all(
            not isinstance(g, bool) and isinstance(g, int | str) and _DEVICE_RE.match(str(g))
            for g in gpus
        ):
            raise bad("gpus", f"= {gpus!r} must be a list of device ids (gpus = [0, 1])")
        if len(set(map(str, gpus))) != len(gpus):
            raise bad("gpus", f"= {gpus!r} names a device twice")
        kw["gpus"] = tuple(str(g) for g in gpus)
    if "host_key_policy" in options:
        policy = options["host_key_policy"]
        if policy not in ("strict", "accept-new"):
            raise bad("host_key_policy", f'= {policy!r} must be "strict" or "accept-new"')
        kw["host_key_policy"] = policy
    for key in ("connect_timeout", "orphan_timeout", "reconnect_timeout"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise bad(key, f"= {value!r} must be a number of seconds above 0")
            kw[key] = float(value)
    if "ssh_options" in options:
        kw["ssh_options"] = _ssh_options(options["ssh_options"], bad)
    if "environment" in options:
        env = options["environment"]
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and _ENV_RE.match(k) and isinstance(v, str) for k, v in env.items()
        ):
            raise bad("environment", f'= {env!r} must be a table of NAME = "value" strings')
        kw["environment"] = dict(env)
    if "forward_env" in options:
        names = options["forward_env"]
        if not isinstance(names, list) or not all(
            isinstance(n, str) and _ENV_RE.match(n) for n in names
        ):
            raise bad("forward_env", f"= {names!r} must be a list of variable names")
        kw["forward_env"] = tuple(names)
    return SSHOptions(**kw)


def _ssh_options(value: Any, bad: Any) -> tuple[str, ...]:
    """``{Name = value}`` or ``["Name=value"]`` as ``ssh -o`` arguments."""
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        pairs = []
        for item in value:
            key, sep, rest = item.partition("=")
            if not sep:
                raise bad("ssh_options", f"item {item!r} must be Name=value")
            pairs.append((key.strip(), rest))
    else:
        raise bad("ssh_options", f"= {value!r} must be a table or a list of Name=value")
    out = []
    for key, val in pairs:
        if not _OPTION_RE.match(key):
            raise bad("ssh_options", f"name {key!r} is not an ssh option name")
        if isinstance(val, bool):
            val = "yes" if val else "no"
        if not isinstance(val, str | int | float) or "\n" in str(val) or "\0" in str(val):
            raise bad("ssh_options", f"{key} = {val!r} must be a one-line value")
        out.append(f"{key}={val}")
    return tuple(out)
