"""stepflow's web UI: ``stepflow ui [--host 127.0.0.1] [--port 8765] [--open]``.

A plugin of the ``stepflow_add_commands`` hook, found through the ``stepflow`` entry-point
group like any third-party plugin. The server (Starlette on uvicorn) is imported only when
the command runs, so ``stepflow`` starts as fast with the plugin installed as without.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys
from typing import TYPE_CHECKING, Any

from stepflow import hookimpl
from stepflow.errors import UsageError

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config

__all__ = ["is_loopback", "stepflow_add_commands"]

#: the environment variable that may hold the token instead of ``--token``
TOKEN_ENV = "STEPFLOW_UI_TOKEN"  # noqa: S105 - a variable name, not a token


@hookimpl
def stepflow_add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    ui = subparsers.add_parser(
        "ui",
        help="browse runs, graphs, logs, metrics and lineage in a web browser (read-only)",
        description="Serve a read-only web UI of this home's runs. It listens on loopback "
        "only unless --host names another address, which then needs a token.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    ui.add_argument("--port", type=int, default=8765, help="port (8765; 0: any free port)")
    ui.add_argument("--open", action="store_true", help="open it in the web browser")
    ui.add_argument(
        "--token",
        default=None,
        help=f"a token every request must carry (default: ${TOKEN_ENV}; one is made up when "
        "--host is not a loopback address)",
    )
    ui.set_defaults(handler=_cmd_ui)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
            f"(0 takes any free one) or stop what is using it"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _cmd_ui(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port from 0 to 65535")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(args.host)
    if not loopback and token is None:
        # Anyone who reaches the address could read every run's records: never without one.
        token = secrets.token_urlsafe(24)
    try:
        import uvicorn

        from stepflow_ui.app import LOOPBACK_HOSTS, make_app
    except ImportError as exc:  # pragma: no cover - the plugin's own dependencies
        raise UsageError(
            f"stepflow ui needs starlette and uvicorn ({exc}); pip install 'stepflow[ui]'"
        ) from None
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/"
    app = make_app(config, token=token, hosts=LOOPBACK_HOSTS if loopback else None)
    print(
        f"stepflow ui: {config.home} at {url}{'?token=' + token if token else ''} "
        f"(read-only; Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    if args.open:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, [url + (f"?token={token}" if token else "")]).start()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="off",
            access_log=False,
        )
    )
    server.run(sockets=[sock])
    return 0
