"""The review queue, one case, its frame, and a person's verdicts.

    GET  /                              the queue: a state, edge and reason filter, counts
    GET  /case/{id}                     one case, its history, next/previous in the queue
    GET  /case/{id}/frame.jpg           the frame the edge sent
    POST /case/{id}/decide              verdict (hazard, safe, teacher) -> the next case
    POST /decisions/{n}/undo            put back what decision n replaced -> its case
    POST /api/cases/{id}/decide         the same, as JSON (the queue's keyboard)
    POST /api/decisions/{n}/undo
    POST /api/confirm                   confirm the teacher on many cases (cautiously)

A verdict is recorded under the session's name and reaches the case's edge as a review
from ``person:<name>`` (``teacher.data.decisions``). It knows nothing about releases
beyond their bands, nor about sessions beyond the name.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from shared.errors import StoreError
from shared.policy import (
    AUDIT,
    FORMAT_ERROR,
    JUDGE_ERROR,
    LOW_CONFIDENCE,
    LOW_PROB_CONFIDENCE,
    SAFETY_KEYWORD,
    UNCERTAIN_SAFETY,
)
from shared.scoring import student_verdict
from teacher.console.auth import Session
from teacher.console.web import Console, Who, console, csrf, page
from teacher.data.decisions import STATES, person_answer

logger = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(csrf)])
REASONS = (UNCERTAIN_SAFETY, SAFETY_KEYWORD, AUDIT, FORMAT_ERROR, LOW_CONFIDENCE,
           LOW_PROB_CONFIDENCE, JUDGE_ERROR)  # fmt: skip
VERDICTS = ("hazard", "safe", "teacher")
MAX_BULK = 500


class Filters(BaseModel):
    state: str = "todo"
    edge: str = ""
    reason: str = ""

    def query(self, **extra) -> str:
        doc = {k: v for k, v in self.model_dump().items() if v and (k != "state" or v != "todo")}
        doc.update({k: v for k, v in extra.items() if v is not None})
        return ("?" + urlencode(doc)) if doc else ""


def filters(state: str = Query("todo"), edge: str = Query(""), reason: str = Query("")) -> Filters:
    if state not in STATES:
        raise HTTPException(400, f"unknown state {state!r}: one of {', '.join(STATES)}")
    return Filters(state=state, edge=edge, reason=reason)


QueueFilters = Annotated[Filters, Depends(filters)]


def _decorate(items: list[dict], bands: dict[int, tuple[float, float]]) -> list[dict]:
    for item in items:
        item["student"] = student_verdict(item["p_unsafe"], item["safety"])
        item["band"] = bands.get(item["release"])
    return items


# ---------------------------------------------------------------- pages
@router.get("/")
def queue_page(
    request: Request,
    f: QueueFilters,
    page_no: int = Query(1, alias="page", ge=1),
    undo: int | None = None,
    done: str = "",
) -> Response:
    con = console(request)
    size = con.page_size
    bands = con.catalog.bands()
    items = con.store.queue(
        bands,
        f.state,
        f.edge or None,
        f.reason or None,
        limit=size + 1,
        offset=(page_no - 1) * size,
    )
    more = len(items) > size
    items = _decorate(items[:size], {b.release: (b.lower, b.upper) for b in bands})
    return page(
        request,
        "queue.html",
        items=items,
        counts=con.store.queue_counts(f.edge or None, f.reason or None),
        edges=con.store.edge_ids(),
        reasons=REASONS,
        states=STATES,
        f=f,
        page_no=page_no,
        more=more,
        first=(page_no - 1) * size,
        undo=undo,
        done=done,
    )


@router.get("/case/{case_id}")
def case_page(
    request: Request,
    case_id: str,
    f: QueueFilters,
    undo: int | None = None,
    done: str = "",
) -> Response:
    con = console(request)
    item = con.store.queue_case(case_id)
    if item is None:
        raise HTTPException(404, f"no case {case_id!r} in the store")
    bands = {b.release: (b.lower, b.upper) for b in con.catalog.bands()}
    _decorate([item], bands)
    history = con.store.decisions(case_id)
    latest = next((d for d in history if d["undone_at"] is None), None)
    return page(
        request,
        "case.html",
        item=item,
        history=history,
        latest=latest,
        f=f,
        next_id=con.store.neighbour(case_id, 1, f.state, f.edge or None, f.reason or None),
        prev_id=con.store.neighbour(case_id, -1, f.state, f.edge or None, f.reason or None),
        undo=undo,
        done=done,
    )


@router.get("/case/{case_id}/frame.jpg")
def frame(request: Request, case_id: str) -> Response:
    data = console(request).store.frame(case_id)
    if not data:
        raise HTTPException(404, f"case {case_id!r} has no frame")
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


# ---------------------------------------------------------------- verdicts
def decide(con: Console, who: Session, case_id: str, verdict: str, answer: str | None) -> dict:
    """Record a person's verdict; returns the decision as the pages and the API show it."""
    item = con.store.queue_case(case_id)
    if item is None:
        raise HTTPException(404, f"no case {case_id!r} in the store")
    if verdict not in VERDICTS:
        raise HTTPException(400, f"verdict {verdict!r}: one of {', '.join(VERDICTS)}")
    if verdict == "teacher":
        if item["teacher"] is None:
            raise HTTPException(
                409, "the teacher has no verdict on this case yet: say hazard or safe"
            )
        safety, action = item["teacher"]["safety"], "confirm"
    else:
        safety, action = verdict == "hazard", "correct"
    text = (answer or "").strip()[:2000] or None
    decision = con.store.decide(
        case_id, safety, who.who, person_answer(text, safety), action=action
    )
    logger.info("console: %s %s case %s: %s (decision %d)", who.who, action, case_id,
                "hazard" if safety else "safe", decision)  # fmt: skip
    return {"decision_id": decision, "case_id": case_id, "safety": safety, "action": action}


def _undo(con: Console, who: Session, decision_id: int) -> str:
    try:
        case_id = con.store.undo(decision_id, who.who)
    except StoreError as exc:
        raise HTTPException(409, str(exc)) from exc
    logger.info("console: %s undid decision %d on case %s", who.who, decision_id, case_id)
    return case_id


def _after(con: Console, case_id: str, f: Filters, decision: int) -> str:
    """Where a verdict leads: the next case in the same queue, else the queue."""
    nxt = con.store.neighbour(case_id, 1, f.state, f.edge or None, f.reason or None)
    if nxt is None:
        return "/" + f.query(undo=decision, done="1")
    return f"/case/{nxt}" + f.query(undo=decision)


@router.post("/case/{case_id}/decide")
def decide_form(
    request: Request,
    case_id: str,
    who: Who,
    verdict: str = Form(...),
    answer: str = Form(""),
    state: str = Form("todo"),
    edge: str = Form(""),
    reason: str = Form(""),
) -> Response:
    con = console(request)
    f = filters(state, edge, reason)
    done = decide(con, who, case_id, verdict, answer)
    return RedirectResponse(_after(con, case_id, f, done["decision_id"]), 303)


@router.post("/decisions/{decision_id}/undo")
def undo_form(
    request: Request,
    decision_id: int,
    who: Who,
    state: str = Form("todo"),
    edge: str = Form(""),
    reason: str = Form(""),
) -> Response:
    case_id = _undo(console(request), who, decision_id)
    f = filters(state, edge, reason)
    return RedirectResponse(f"/case/{case_id}" + f.query(), 303)


class Verdict(BaseModel):
    verdict: str
    answer: str | None = Field(None, max_length=2000)


@router.post("/api/cases/{case_id}/decide")
def decide_api(request: Request, case_id: str, body: Verdict, who: Who):
    return decide(console(request), who, case_id, body.verdict, body.answer)


@router.post("/api/decisions/{decision_id}/undo")
def undo_api(request: Request, decision_id: int, who: Who):
    return {"decision_id": decision_id, "case_id": _undo(console(request), who, decision_id)}


class Selection(BaseModel):
    case_ids: list[str] = Field(min_length=1, max_length=MAX_BULK)


@router.post("/api/confirm")
def confirm_api(request: Request, body: Selection, who: Who):
    """Confirm the teacher's verdict on the selected cases; the risky ones are skipped with
    the reason (``Decisions.confirm_teacher``)."""
    decided, skipped = console(request).store.confirm_teacher(body.case_ids, who.who)
    logger.info("console: %s confirmed the teacher on %d case(s), %d skipped", who.who,
                len(decided), len(skipped))  # fmt: skip
    return JSONResponse({"confirmed": len(decided), "decisions": decided, "skipped": skipped})
