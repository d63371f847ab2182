"""The ASGI application: pages, the JSON API under ``/api/``, server-sent events, and the
guards that keep it safe by default.

Every request opens the home's run records read-only (a :class:`ReadAPI` of its own, closed
when the answer is made), so the UI never writes to a home and never holds up a run. Safety:

- a token, when one is set, is required on every request (``Authorization: Bearer``, the
  ``stepflow_ui_token`` cookie, or ``?token=`` once, which sets the cookie);
- served on loopback, only loopback host names are answered, so a web page elsewhere cannot
  reach the records through DNS rebinding;
- pages allow scripts from the UI itself only (a Content-Security-Policy), so a step or run
  name can never run code in the browser.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from stepflow.errors import NotRegisteredError, StepflowError, UsageError
from stepflow_ui import data, pages

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._storage.read import ReadAPI

__all__ = ["LOOPBACK_HOSTS", "make_app"]

#: the host names a loopback-only UI answers to
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_COOKIE = "stepflow_ui_token"
#: an event stream that has not looked at the records yet
_UNSEEN = object()
_STATIC = Path(__file__).parent / "static"
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class BadRequest(UsageError):
    """A request's own values are wrong (an unknown filter value, a missing run to compare)."""


class _Guard:
    """Token and host checks, and security headers on every answer."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: Iterable[str] | None) -> None:
        self.app = app
        self.token = token
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.hosts is not None and name not in self.hosts:
            response: Response = PlainTextResponse(
                f"stepflow ui answers only to {', '.join(sorted(self.hosts))}; open it through "
                f"one of them, or serve it on another address with --host and --token",
                status_code=400,
            )
            await response(scope, receive, send)
            return
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and secrets.compare_digest(given, self.token):
                # Once through the URL, then in a cookie: the token leaves the address bar.
                url = request.url.remove_query_params("token")
                response = RedirectResponse(str(url), status_code=303)
                response.set_cookie(_COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            auth = request.headers.get("authorization", "")
            offered = auth[7:] if auth.lower().startswith("bearer ") else None
            offered = offered or request.cookies.get(_COOKIE)
            if offered is None or not secrets.compare_digest(offered, self.token):
                response = PlainTextResponse(
                    "this stepflow ui needs its token: open the address `stepflow ui` printed "
                    "(it ends in ?token=...), or send `Authorization: Bearer TOKEN`",
                    status_code=401,
                )
                await response(scope, receive, send)
                return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def version_of(token: tuple[Any, ...] | None) -> str:
    """A short text for a change token: pages carry the one they were made from, and their
    event stream says "changed" at once when the records moved on meanwhile."""
    import hashlib

    return hashlib.blake2b(repr(token).encode(), digest_size=6).hexdigest()


def _clean(value: Any) -> Any:
    """JSON-ready data without the page-only keys (``_ts``)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def make_app(
    config: Config,
    *,
    token: str | None = None,
    hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    poll: float = 0.5,
    stream_for: float = 300.0,
) -> ASGIApp:
    """The UI of ``config``'s home.

    :param token: required on every request when set.
    :param hosts: the host names answered (``None``: any, for a UI served on another address
        behind its token).
    :param poll: seconds between looks at the records while a page is live.
    :param stream_for: seconds an event stream stays open; browsers reconnect by themselves.
    """
    from stepflow._storage.read import ReadAPI

    def read_api() -> ReadAPI:
        return ReadAPI(config, read_only=True)

    def answer(fn: Callable[[Request, ReadAPI], Response], *, json_api: bool) -> Callable[..., Any]:
        def endpoint(request: Request) -> Response:
            api = read_api()
            try:
                return fn(request, api)
            except (UsageError, NotRegisteredError) as exc:
                status = 400 if isinstance(exc, BadRequest) else 404
                text = str(exc)
                if "no run records" in text and request.url.path in ("/runs", "/api/runs"):
                    # A home nobody has run in yet: an empty listing, not an error.
                    empty = _empty_runs(request)
                    return (
                        JSONResponse(_clean(empty))
                        if json_api
                        else HTMLResponse(pages.runs_page(empty, version=version_of(None)))
                    )
                if json_api:
                    return JSONResponse({"error": text}, status_code=status)
                return HTMLResponse(pages.message_page("Not found", text), status_code=status)
            except StepflowError as exc:
                if json_api:
                    return JSONResponse({"error": str(exc)}, status_code=500)
                return HTMLResponse(pages.message_page("Error", str(exc)), status_code=500)
            finally:
                api.close()

        return endpoint

    # --- the values, shared by pages and the API --------------------------------------------

    def _filters(request: Request) -> dict[str, Any]:
        p = request.query_params
        try:
            limit = min(max(int(p.get("limit", 50)), 1), 1000)
            offset = max(int(p.get("offset", 0)), 0)
        except ValueError:
            raise BadRequest("limit and offset must be whole numbers") from None
        state = p.get("state") or None
        if state is not None and state not in data.RUN_STATES:
            raise BadRequest(f"unknown run state {state!r}; states: {', '.join(data.RUN_STATES)}")
        return {
            "pipeline": p.get("pipeline") or None,
            "state": state,
            "schedule": p.get("schedule") or None,
            "limit": limit,
            "offset": offset,
        }

    def _empty_runs(request: Request) -> dict[str, Any]:
        f = _filters(request)
        return {
            "runs": [],
            "total": 0,
            "limit": f["limit"],
            "offset": f["offset"],
            "filters": {k: f[k] for k in ("pipeline", "state", "schedule")},
            "pipelines": [],
            "schedules": [],
            "states": list(data.RUN_STATES),
        }

    def runs_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(_clean(data.runs(api, **_filters(request))))

    def runs_html(request: Request, api: ReadAPI) -> Response:
        # The token before the data: a change in between shows as one, never as none.
        version = version_of(api.changes())
        return HTMLResponse(pages.runs_page(data.runs(api, **_filters(request)), version=version))

    def run_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(_clean(data.run(api, request.path_params["run"])))

    def run_html(request: Request, api: ReadAPI) -> Response:
        found = api.run(request.path_params["run"])
        version = version_of(api.changes(found.id))
        run = data.run(api, found.id)
        return HTMLResponse(pages.run_page(run, api.source_files(run["id"]), version=version))

    def run_svg(request: Request, api: ReadAPI) -> Response:
        run = data.run(api, request.path_params["run"])
        return Response(pages.dag_svg(run), media_type="image/svg+xml")

    def source_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(api.source_files(request.path_params["run"]))

    def source_html(request: Request, api: ReadAPI) -> Response:
        rid, path = request.path_params["run"], request.path_params["path"]
        raw = api.source_file(rid, path)
        text = raw.decode("utf-8", errors="replace")
        return HTMLResponse(pages.source_page(api.run(rid).id, path, text))

    def step_json(request: Request, api: ReadAPI) -> Response:
        p = request.path_params
        return JSONResponse(_clean(data.step(api, p["run"], p["step"])))

    def step_html(request: Request, api: ReadAPI) -> Response:
        p = request.path_params
        found = api.run(p["run"])
        version = version_of(api.changes(found.id))
        step = data.step(api, found.id, p["step"])
        return HTMLResponse(
            pages.step_page(step, data.any_log(api, found.id, p["step"], step), version=version)
        )

    def log_json(request: Request, api: ReadAPI) -> Response:
        p = request.path_params
        step = data.step(api, p["run"], p["step"])
        return JSONResponse(data.any_log(api, p["run"], p["step"], step))

    def compare_json(request: Request, api: ReadAPI) -> Response:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            raise BadRequest("give two runs: /api/compare?a=RUN&b=RUN")
        return JSONResponse(data.compare(api, a, b))

    def compare_html(request: Request, api: ReadAPI) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not a or not b:
            return HTMLResponse(pages.compare_page(None, a, b))
        try:
            found = data.compare(api, a, b)
        except UsageError as exc:
            return HTMLResponse(pages.compare_page(None, a, b, str(exc)), status_code=404)
        return HTMLResponse(pages.compare_page(found, a, b))

    def lineage_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.lineage(api, request.path_params["artifact"]))

    def lineage_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.lineage_page(data.lineage(api, request.path_params["artifact"])))

    def datasets_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.datasets(api))

    def datasets_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.datasets_page(data.datasets(api)))

    def dataset_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.dataset(api, request.path_params["name"]))

    def dataset_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.dataset_page(data.dataset(api, request.path_params["name"])))

    def models_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.models(api))

    def models_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.models_page(data.models(api)))

    def model_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.model(api, request.path_params["name"]))

    def model_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.model_page(data.model(api, request.path_params["name"])))

    def published_json(request: Request, api: ReadAPI) -> Response:
        return JSONResponse(data.published(api))

    def published_html(request: Request, api: ReadAPI) -> Response:
        return HTMLResponse(pages.published_page(data.published(api)))

    # --- live updates -------------------------------------------------------------------

    def _token(run: str | None) -> tuple[Any, ...] | None:
        api = read_api()
        try:
            return api.changes(run)
        except UsageError:
            return None  # no records yet
        finally:
            api.close()

    async def _events(
        request: Request, look: Callable[[], tuple[str, str, bool] | None]
    ) -> AsyncIterator[str]:
        """Ask ``look`` every ``poll`` seconds; it answers ``(event, data, last)`` when there
        is something to send, and the stream ends after a ``last`` one."""
        yield "retry: 2000\n\n"
        deadline = time.monotonic() + stream_for
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            found = await asyncio.to_thread(look)
            if found is not None:
                event, payload, last = found
                yield f"event: {event}\ndata: {payload}\n\n"
                if last:
                    return
            await asyncio.sleep(poll)

    def _stream(request: Request, look: Callable[[], tuple[str, str, bool] | None]) -> Response:
        return StreamingResponse(
            _events(request, look),
            media_type="text/event-stream",
            headers={"cache-control": "no-store"},
        )

    def runs_events(request: Request) -> Response:
        page_version = request.query_params.get("v")
        seen: list[Any] = [_UNSEEN]

        def look() -> tuple[str, str, bool] | None:
            now = _token(None)
            if seen[0] is _UNSEEN:
                # The first look: against the version the page was made from.
                seen[0] = now
                if page_version is None or page_version == version_of(now):
                    return None
                return ("change", "runs", False)
            if now == seen[0]:
                return None
            seen[0] = now
            return ("change", "runs", False)

        return _stream(request, look)

    def run_events(request: Request) -> Response:
        rid = request.path_params["run"]
        page_version = request.query_params.get("v")
        seen: list[Any] = [_UNSEEN]

        def look() -> tuple[str, str, bool] | None:
            now = _token(rid)
            running = bool(now) and now[0] == "running"
            if seen[0] is _UNSEEN:
                seen[0] = now
                unchanged = page_version is None or page_version == version_of(now)
                if unchanged and running:
                    return None
            elif now == seen[0] and running:
                return None
            seen[0] = now
            # A run that ended (or never was) ends the stream: the page shows it as it is.
            return ("change", "run" if running else "done", not running)

        return _stream(request, look)

    def log_events(request: Request) -> Response:
        """A step's log as it grows: ``live`` events while it runs (the first, ``reset``,
        with everything printed so far; then each new piece of each attempt's stream), then
        one ``log`` event with the recorded log, which ends the stream."""
        p = request.path_params
        #: (attempt, stream) → characters sent; ``None`` before the first live event
        sent: list[dict[tuple[int, str], int] | None] = [None]

        def look() -> tuple[str, str, bool] | None:
            api = read_api()
            try:
                step = data.step(api, p["run"], p["step"])
                if step["recorded"] or step["run_state"] != "running":
                    entries = data.step_log(api, p["run"], p["step"]) if step["recorded"] else []
                    final = {"entries": entries, "state": step["state"]}
                    return ("log", json.dumps(final), True)
                found = data.live_log(api, p["run"], p["step"])
            except UsageError:
                return None
            finally:
                api.close()
            if found is None:
                return None
            reset = sent[0] is None
            known = sent[0] = {} if reset else sent[0]
            assert known is not None
            fresh = []
            for entry in found:
                key = (entry["attempt"], entry["stream"])
                text = entry["text"][known.get(key, 0) :]
                known[key] = len(entry["text"])
                if text or reset:
                    fresh.append({**entry, "text": text})
            if not fresh and not reset:
                return None
            return ("live", json.dumps({"entries": fresh, "reset": reset}), False)

        return _stream(request, look)

    def index(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=307)

    def favicon(request: Request) -> Response:
        # Browsers ask for one after a page that names none (an API answer, an error).
        return Response(status_code=204)

    html, api_ = (lambda fn: answer(fn, json_api=False)), (lambda fn: answer(fn, json_api=True))
    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/runs", html(runs_html)),
        Route("/runs/{run}", html(run_html)),
        Route("/runs/{run}/graph.svg", html(run_svg)),
        Route("/runs/{run}/source/{path:path}", html(source_html)),
        Route("/runs/{run}/steps/{step}", html(step_html)),
        Route("/compare", html(compare_html)),
        Route("/lineage/{artifact}", html(lineage_html)),
        Route("/datasets", html(datasets_html)),
        Route("/datasets/{name}", html(dataset_html)),
        Route("/models", html(models_html)),
        Route("/models/{name}", html(model_html)),
        Route("/published", html(published_html)),
        Route("/api/runs", api_(runs_json)),
        Route("/api/runs/{run}", api_(run_json)),
        Route("/api/runs/{run}/source", api_(source_json)),
        Route("/api/runs/{run}/steps/{step}", api_(step_json)),
        Route("/api/runs/{run}/steps/{step}/log", api_(log_json)),
        Route("/api/compare", api_(compare_json)),
        Route("/api/lineage/{artifact}", api_(lineage_json)),
        Route("/api/datasets", api_(datasets_json)),
        Route("/api/datasets/{name}", api_(dataset_json)),
        Route("/api/models", api_(models_json)),
        Route("/api/models/{name}", api_(model_json)),
        Route("/api/published", api_(published_json)),
        Route("/events/runs", runs_events),
        Route("/events/runs/{run}", run_events),
        Route("/events/runs/{run}/steps/{step}/log", log_events),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    return _Guard(app, token=token, hosts=hosts)
