"""Fleet and Flywheel: how the edges are, and what the loop did, release by release.

    GET /fleet          each edge: last heartbeat, release and head, inputs and teacher
                        calls per 100 since that release, outbox depth, latest push
    GET /flywheel       teacher calls per 100 and audit-estimated system safety recall per
                        release, as a chart and a table (``gemma-teacher report``'s numbers)
    GET /api/fleet, /api/flywheel   the same as JSON

Read only. The numbers come from ``teacher.console.views``; it knows nothing about HTTP
beyond rendering them.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import Response

from teacher.console.views import chart, fleet_rows, flywheel_rows
from teacher.console.web import console, page

router = APIRouter()


def _fleet(request: Request) -> tuple[list[dict], int]:
    con = console(request)
    active = con.catalog.active()
    store = con.store
    rows = fleet_rows(
        store.edges(),
        store.calls_by_edge_release(),
        store.input_counts(),
        active,
        con.config.server.edge_timeout_s,
    )
    return rows, active


def _flywheel(request: Request):
    store = console(request).store
    return flywheel_rows(store.release_evidence(), store.input_counts())


@router.get("/fleet")
def fleet_page(request: Request) -> Response:
    rows, active = _fleet(request)
    return page(request, "fleet.html", edges=rows, active=active)


@router.get("/api/fleet")
def fleet_api(request: Request) -> dict:
    rows, active = _fleet(request)
    return {"active": active, "edges": rows}


@router.get("/flywheel")
def flywheel_page(request: Request) -> Response:
    rows = _flywheel(request)
    return page(
        request,
        "flywheel.html",
        rows=rows,
        chart=chart(rows),
        active=console(request).catalog.active(),
    )


@router.get("/api/flywheel")
def flywheel_api(request: Request) -> dict:
    return {"releases": [asdict(r) for r in _flywheel(request)]}
