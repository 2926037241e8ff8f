"""What every console route shares: who is asking, the CSRF check, pages and errors.

- ``Console``: the one object the routes reach (``request.app.state.console``): the
  store, the release catalog, the sessions and the settings.
- ``guard``: the middleware in front of every request. It refuses a Host header that is
  not this machine while no token is set (a web page elsewhere cannot reach a loopback
  console through DNS rebinding), finds the session (a signed cookie; ``Authorization:
  Bearer <token>`` for scripts; a fresh one on loopback without a token), sends anyone
  without one to the sign-in page, and sets the security headers (no framing, a strict
  content security policy: the pages run only this package's own script).
- ``csrf``: a dependency of every state-changing route: the session's CSRF token in the
  ``X-CSRF-Token`` header or the ``csrf_token`` form field, else 403.
- ``page`` renders a template; ``problem`` answers an error as a page or as JSON, never a
  stack trace.

It knows nothing about cases or releases beyond the objects it hands to routes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.teacher_config import TeacherConfig
from teacher.console.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, Session, Sessions
from teacher.console.catalog import Catalog
from teacher.data.store import CaseStore

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PUBLIC = ("/signin", "/static/", "/favicon.ico")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    config: TeacherConfig
    store: CaseStore
    catalog: Catalog
    sessions: Sessions
    host: str
    env: Environment = field(init=False)

    def __post_init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = when
        self.env.filters["ago"] = ago
        self.env.filters["num"] = num

    @property
    def page_size(self) -> int:
        return self.config.console.page_size


def console(request: Request) -> Console:
    return request.app.state.console


def session(request: Request) -> Session:
    """The session of a request that passed ``guard`` (routes outside PUBLIC)."""
    found = getattr(request.state, "session", None)
    if found is None:
        raise HTTPException(401, "sign in first")
    return found


Who = Annotated[Session, Depends(session)]  # a route's parameter: the person asking


async def csrf(request: Request) -> None:
    """403 unless a state-changing request carries its session's CSRF token."""
    if request.method in SAFE_METHODS or getattr(request.state, "bearer", False):
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None and "form" in request.headers.get("content-type", ""):
        given = (await request.form()).get(CSRF_FIELD)
    found = getattr(request.state, "session", None)
    if found is None or not console(request).sessions.csrf_ok(found, str(given or "")):
        raise HTTPException(403, "refused: this request carries no valid CSRF token")


def host_name(header: str | None) -> str:
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def guard(request: Request, call_next) -> Response:
    app_console = console(request)
    sessions = app_console.sessions
    path = request.url.path
    fresh_cookie = None
    if sessions.open and host_name(request.headers.get("host")) not in (
        LOOPBACK_NAMES | {app_console.host.lower()}
    ):
        return _with_headers(
            problem(request, 403, "refused: this console answers only to 127.0.0.1/localhost")
        )
    request.state.bearer = sessions.bearer_ok(request.headers.get("authorization"))
    if request.state.bearer:
        request.state.session = Session("token", "bearer", math.inf)
    else:
        request.state.session = sessions.read(request.cookies.get(COOKIE))
    if request.state.session is None and sessions.open:
        request.state.session, fresh_cookie = sessions.new(sessions.default_name())
    if request.state.session is None and not path.startswith(PUBLIC):
        if request.method in SAFE_METHODS and not wants_json(request):
            response: Response = RedirectResponse(f"/signin?next={_local(path)}", 303)
        else:
            response = problem(request, 401, "refused: sign in first (or send the token)")
        return _with_headers(response)
    response = await call_next(request)
    if fresh_cookie:
        set_session_cookie(request, response, fresh_cookie, sessions.hours)
    return _with_headers(response)


def _with_headers(response: Response) -> Response:
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def set_session_cookie(request: Request, response: Response, value: str, hours: float) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


def _local(path: str) -> str:
    """A path to come back to after signing in: this site only."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def page(request: Request, template: str, code: int = 200, **context) -> HTMLResponse:
    app_console = console(request)
    found = getattr(request.state, "session", None)
    context.update(
        who=found.who if found else None,
        csrf_token=app_console.sessions.csrf(found) if found else "",
        token_mode=not app_console.sessions.open,
        path=request.url.path,
    )
    html = app_console.env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=code)


def problem(request: Request, status: int, message: str) -> Response:
    """An error as JSON (``/api/``) or a page; the message is one line for a person."""
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    try:
        return page(request, "error.html", status, status=status, message=message)
    except Exception:  # a broken template must not hide the error itself
        logger.exception("error page failed")
        return HTMLResponse(f"<p>{status}: error</p>", status_code=status)


# ---------------------------------------------------------------- template filters
def when(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)
