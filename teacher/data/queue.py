"""The review queue: the cases a person's verdict is worth most on, first.

``ReviewQueue`` is the part of ``teacher.data.store.CaseStore`` that reads the queue for
``gemma-teacher console``: a page of cases in a state (``STATES``) with edge and reason
filters, their counts, and a case's neighbours in the same order (next/previous).

Worth (higher first), from what the store knows about a case::

    4   the teacher and the student disagree (+1 more when the teacher saw a hazard
        the student passed: a missed hazard is the worst thing the edge can do)
    3   nobody has a verdict yet (the teacher has not reviewed it, or could not)
    1   an audit (its label is what the recall estimate rests on)
    0-1 how close the student's p(unsafe) is to its release's escalation band
        (1 inside the band, falling to 0 half a unit of probability away)

Worth is kept per case in ``case_index`` (``teacher.data.case_index``, the SQL of the sum
above), so a page of the queue and its counts read a compact indexed table, not every
case's frame and verdicts. It uses the store's connection and lock; it knows nothing
about sockets or web pages.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass

from shared.errors import StoreError
from teacher.data.case_index import AUDIT, DISAGREE, NO_VERDICT

STATES = ("todo", "disagreed", "unreviewed", "audit", "decided", "all")


@dataclass(frozen=True)
class Band:
    """A release's escalation band: p(unsafe) in [lower, upper] goes to the teacher."""

    release: int
    lower: float
    upper: float


_STATE_WHERE = {
    "todo": "i.person IS NULL",
    "disagreed": f"i.person IS NULL AND {DISAGREE}",
    "unreviewed": f"i.person IS NULL AND {NO_VERDICT}",
    "audit": f"i.person IS NULL AND {AUDIT}",
    "decided": "i.person IS NOT NULL",
    "all": "1",
}
# the queue's order, and the same order's key for a case's neighbours (keyset paging)
_ORDER = {"decided": ("i.decided_at", "i.rowid"), "": ("i.worth", "i.received_at", "i.rowid")}
_QUEUE_COLUMNS = (
    "c.case_id, c.edge_id, c.received_at, c.kind, c.input, c.answer, c.safety, c.confidence,"
    " c.reasons, c.status, c.status_detail, c.frame IS NOT NULL, i.release, c.p_unsafe,"
    " i.alert, i.audit_p, r.safety, r.answer, r.reviewer, k.safety, k.answer, k.who,"
    " k.corrected_at, i.worth"
)
_QUEUE_FROM = (
    " FROM case_index i JOIN cases c ON c.case_id=i.case_id"
    " LEFT JOIN reviews r ON r.case_id=i.case_id"
    " LEFT JOIN corrections k ON k.case_id=i.case_id"
)


class ReviewQueue:
    _db: sqlite3.Connection
    _lock: threading.Lock

    # ------------------------------------------------------------ the queue
    def queue(
        self,
        bands: list[Band] = (),
        state: str = "todo",
        edge: str | None = None,
        reason: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict]:
        """Cases in ``state`` (``STATES``), worth first (then newest), as plain data.
        ``bands``: releases' escalation bands, recorded first (``CaseIndex.set_bands``)."""
        if bands:
            self.set_bands(bands)
        where, args = self._filters(state, edge, reason)
        keys = _order(state)
        order = ", ".join(f"{k} DESC" for k in keys)
        # the page's ids from the index alone, then their rows: an offset skips index entries
        page = f"SELECT i.case_id FROM case_index i WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        sql = f"SELECT {_QUEUE_COLUMNS}{_QUEUE_FROM} WHERE i.case_id IN ({page}) ORDER BY {order}"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit, offset)).fetchall()
        return [_queue_row(r) for r in rows]

    def queue_case(self, case_id: str) -> dict | None:
        """One case as the queue shows it (None: no such case)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_QUEUE_COLUMNS}{_QUEUE_FROM} WHERE i.case_id=?", (case_id,)
            ).fetchone()
        return None if row is None else _queue_row(row)

    def neighbour(
        self,
        case_id: str,
        step: int,
        state: str = "todo",
        edge: str | None = None,
        reason: str | None = None,
    ) -> str | None:
        """The case after (``step`` 1) or before (-1) ``case_id`` in the queue's order, with
        the same filters; the case itself need not be in the queue any more (decided)."""
        where, args = self._filters(state, edge, reason)
        keys = _order(state)
        with self._lock:
            key = self._db.execute(
                f"SELECT {', '.join(keys)} FROM case_index i WHERE i.case_id=?", (case_id,)
            ).fetchone()
            if key is None or key[0] is None:
                return None
            cmp, way = ("<", "DESC") if step > 0 else (">", "ASC")
            row = self._db.execute(
                f"SELECT i.case_id FROM case_index i WHERE {where} AND ({', '.join(keys)}) {cmp}"
                f" ({', '.join('?' * len(keys))}) ORDER BY {', '.join(f'{k} {way}' for k in keys)}"
                " LIMIT 1",
                (*args, *key),
            ).fetchone()
        return row[0] if row else None

    def queue_counts(self, edge: str | None = None, reason: str | None = None) -> dict[str, int]:
        """How many cases each state holds (with the same edge and reason filters)."""
        where, args = self._filters("all", edge, reason)
        sql = (
            f"SELECT COUNT(*), SUM(i.person IS NULL), SUM(i.person IS NULL AND {DISAGREE}),"
            f" SUM(i.person IS NULL AND {NO_VERDICT}), SUM(i.person IS NULL AND {AUDIT}),"
            f" SUM(i.person IS NOT NULL) FROM case_index i WHERE {where}"
        )
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        keys = ("all", "todo", "disagreed", "unreviewed", "audit", "decided")
        return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}

    def edge_ids(self) -> list[str]:
        """Every edge that sent a case or a heartbeat."""
        with self._lock:
            # one index step per edge (a loose index scan), not one per case
            rows = self._db.execute(
                "WITH RECURSIVE e(x) AS (SELECT MIN(edge_id) FROM case_index UNION ALL"
                " SELECT (SELECT MIN(edge_id) FROM case_index WHERE edge_id > x) FROM e"
                " WHERE x IS NOT NULL) SELECT x FROM e WHERE x IS NOT NULL"
                " UNION SELECT edge_id FROM edges"
            ).fetchall()
        return sorted(r[0] for r in rows)

    @staticmethod
    def _filters(state: str, edge: str | None, reason: str | None) -> tuple[str, tuple]:
        if state not in _STATE_WHERE:
            raise StoreError(f"unknown queue state {state!r} (one of {', '.join(STATES)})")
        where, args = [_STATE_WHERE[state]], []
        if edge:
            where.append("i.edge_id = ?")
            args.append(edge)
        if reason:
            where.append("i.reasons LIKE ?")
            args.append(f'%"{reason}"%')
        return " AND ".join(where), tuple(args)


def _order(state: str) -> tuple[str, ...]:
    return _ORDER["decided"] if state == "decided" else _ORDER[""]


def _queue_row(r: tuple) -> dict:
    (cid, edge, received, kind, text, answer, safety, conf, reasons, status, detail, has_frame,
     release, p, alert, audit_p, t_safety, t_answer, t_who, k_safety, k_answer, k_who, k_at,
     worth) = r  # fmt: skip
    return {
        "case_id": cid,
        "edge_id": edge,
        "received_at": received,
        "kind": kind,
        "input": text,
        "answer": answer,
        "safety": None if safety is None else bool(safety),
        "confidence": conf,
        "reasons": json.loads(reasons),
        "status": status,
        "status_detail": detail,
        "has_frame": bool(has_frame),
        "release": int(release),
        "p_unsafe": p,
        "alert": bool(alert),
        "audit_p": audit_p,
        "teacher": None
        if t_safety is None
        else {"safety": bool(t_safety), "answer": t_answer, "reviewer": t_who},
        "person": None
        if k_safety is None
        else {"safety": bool(k_safety), "answer": k_answer, "who": k_who, "at": k_at},
        "worth": round(float(worth), 3),
    }
