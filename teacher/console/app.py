"""The console's ASGI app: routes, static files, the guard, and errors as pages.

    console = open_console(config, host)         # the store beside a running server
    app = create_app(console)                    # serve with uvicorn (teacher.console.cli)

``open_console`` refuses a host other machines can reach unless ``console.token`` is set
(``teacher.console.auth.check_exposure``) and opens the store as ``cases`` does: WAL,
no claim recovery (the server's review workers own their claims), so it is safe beside
a running ``gemma-teacher serve``. Every error answers as a page or JSON with one line
for a person; an unexpected one is logged with its traceback and never shown.
It knows nothing about what each page shows.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import StoreError
from shared.teacher_config import TeacherConfig
from teacher.console import routes_queue, routes_releases, routes_report, routes_session
from teacher.console.auth import Sessions, check_exposure
from teacher.console.catalog import Catalog
from teacher.console.web import HERE, Console, guard, problem
from teacher.data.store import CaseStore, default_store_path
from teacher.release.registry import ReleaseRegistry

logger = logging.getLogger(__name__)

ROUTES = (routes_session, routes_queue, routes_releases, routes_report)


def open_console(config: TeacherConfig, host: str | None = None) -> Console:
    """The console of a teacher home; ConfigError for an exposed host without a token,
    StoreError when the home has no store yet."""
    host = host or config.console.host
    token = config.console.token.get_secret_value() if config.console.token else None
    check_exposure(host, token)
    path = default_store_path(config.home)
    if not path.is_file():
        raise StoreError(f"no store at {path}: has `gemma-teacher serve` run with this home?")
    store = CaseStore(path, recover=False)
    catalog = Catalog(ReleaseRegistry.of(config))
    store.set_bands(catalog.bands())
    return Console(config, store, catalog, Sessions(token, config.console.session_hours), host)


def create_app(console: Console) -> FastAPI:
    token = console.sessions.token
    check_exposure(console.host, token)  # again: an app built by hand must not skip it
    app = FastAPI(title="gemma-teacher console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    app.middleware("http")(guard)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in ROUTES:
        app.include_router(module.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no page at {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed at {request.url.path}"
        return problem(request, exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return problem(request, 400, f"bad request: {where or 'input'}: {first.get('msg', '')}")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        return problem(request, 409, " ".join(str(exc).split()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("console: %s %s failed", request.method, request.url.path)
        return problem(
            request, 500, "internal error: logged on the teacher box (see its console log)"
        )

    return app
