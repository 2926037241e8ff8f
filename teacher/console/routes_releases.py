"""Releases: each one's metrics and gate verdict, the active one; roll back and re-push.

    GET  /releases                      every release, newest first, every failed rule named
    GET  /releases/{n}/activate         asks: make release n active? (what changes, for whom)
    POST /releases/{n}/activate         does it: the server pushes it to every edge
    GET  /releases/repush               asks: push the active release again now?
    POST /releases/repush               does it (edges that do not run it get it within a second)

Each change sits behind its own confirmation page and a POST with the CSRF token. It
knows nothing about cases.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from shared.errors import StoreError
from teacher.console.web import Who, console, csrf, page

logger = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(csrf)])


def _edges_not_on(request: Request, version: int) -> list[dict]:
    return [e for e in console(request).store.edges() if e["release"] != version]


@router.get("/releases")
def releases_page(request: Request, done: str = "") -> Response:
    con = console(request)
    return page(
        request,
        "releases.html",
        releases=con.catalog.releases(),
        active=con.catalog.active(),
        behind=_edges_not_on(request, con.catalog.active()),
        done=done,
    )


def _known(request: Request, version: int):
    try:
        return console(request).catalog.info(version)
    except StoreError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/releases/{version}/activate")
def activate_ask(request: Request, version: int) -> Response:
    con = console(request)
    target = _known(request, version)
    active = con.catalog.active()
    return page(
        request,
        "confirm.html",
        title=f"Make release v{version} active?",
        action=f"/releases/{version}/activate",
        button=("Roll back to" if version < active else "Activate") + f" v{version}",
        target=target,
        active=active,
        edges=con.store.edges(),
        what="activate",
    )


@router.post("/releases/{version}/activate")
def activate(request: Request, version: int, who: Who) -> Response:
    con = console(request)
    _known(request, version)
    before = con.catalog.active()
    try:
        described = con.catalog.rollback(version)
    except StoreError as exc:
        raise HTTPException(409, str(exc)) from exc
    logger.warning("console: %s made release v%d active (was v%d)", who.who, version, before)
    return _done(f"v{version} is active ({described}); was v{before}")


@router.get("/releases/repush")
def repush_ask(request: Request) -> Response:
    con = console(request)
    active = con.catalog.active()
    return page(
        request,
        "confirm.html",
        title=f"Push release v{active} again now?",
        action="/releases/repush",
        button=f"Re-push v{active}",
        target=_known(request, active),
        active=active,
        edges=con.store.edges(),
        what="repush",
    )


@router.post("/releases/repush")
def repush(request: Request, who: Who) -> Response:
    con = console(request)
    con.catalog.repush()
    active = con.catalog.active()
    logger.warning("console: %s asked for a re-push of release v%d", who.who, active)
    stamp = time.strftime("%H:%M:%S")
    return _done(
        f"re-push of v{active} asked at {stamp}: edges that do not run it get it within a second"
    )


def _done(message: str) -> Response:
    return RedirectResponse("/releases?" + urlencode({"done": message}), 303)
