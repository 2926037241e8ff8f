"""Signing in and out of the console.

With ``console.token`` set, a person signs in with a name and the token; without one (the
console is on loopback) the name alone can be changed here. The sign-in form carries a
CSRF token of its own, tied to a short-lived cookie, since no session exists yet. Wrong
tokens from one address are counted: after ``MAX_FAILURES`` in ``WINDOW_S`` seconds that
address is refused until the window passes. It knows nothing about cases or releases.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict, deque

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from teacher.console.auth import COOKIE, Session, clean_name
from teacher.console.web import Who, _local, console, csrf, page, set_session_cookie

logger = logging.getLogger(__name__)

router = APIRouter()
LOGIN_COOKIE = "gemma_console_login"
MAX_FAILURES = 10
WINDOW_S = 300.0
_failures: dict[str, deque] = defaultdict(deque)


def _login_session(nonce: str) -> Session:
    return Session("", f"login:{nonce}", 0.0)


def _throttled(address: str) -> float:
    """Seconds until ``address`` may try again (0: now)."""
    tries = _failures[address]
    while tries and tries[0] < time.monotonic() - WINDOW_S:
        tries.popleft()
    if len(tries) < MAX_FAILURES:
        return 0.0
    return tries[0] + WINDOW_S - time.monotonic()


@router.get("/signin")
def signin_form(request: Request, next: str = "/", error: str = "") -> Response:
    nonce = secrets.token_urlsafe(16)
    sessions = console(request).sessions
    response = page(
        request,
        "signin.html",
        401 if error else 200,
        next=_local(next),
        error=error,
        login_csrf=sessions.csrf(_login_session(nonce)),
        default_name=getattr(request.state.session, "who", "") or "",
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=900,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/signin",
    )
    return response


@router.post("/signin")
def signin(
    request: Request,
    name: str = Form(""),
    token: str = Form(""),
    csrf_token: str = Form(""),
    next: str = Form("/"),
) -> Response:
    sessions = console(request).sessions
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not sessions.csrf_ok(_login_session(nonce), csrf_token):
        raise HTTPException(403, "refused: the sign-in form has expired; open it again")
    address = request.client.host if request.client else "?"
    if not sessions.open:
        wait = _throttled(address)
        if wait > 0:
            raise HTTPException(429, f"too many wrong tokens from {address}: wait {wait:.0f} s")
        if not sessions.check_token(token):
            _failures[address].append(time.monotonic())
            logger.warning("console: a wrong token from %s", address)
            return signin_form(request, next, "That is not the token of this console.")
    who = clean_name(name or sessions.default_name())
    _, cookie = sessions.new(who)
    logger.info("console: %s signed in from %s", who, address)
    response = RedirectResponse(_local(next), 303)
    set_session_cookie(request, response, cookie, sessions.hours)
    response.delete_cookie(LOGIN_COOKIE, path="/signin")
    return response


@router.post("/signout", dependencies=[Depends(csrf)])
def signout(request: Request, who: Who) -> Response:
    logger.info("console: %s signed out", who.who)
    response = RedirectResponse("/signin", 303)
    response.delete_cookie(COOKIE, path="/")
    return response
