"""A person's decisions on cases (the console, ``cases correct``).

``Decisions`` is the part of ``teacher.data.store.CaseStore`` that keeps them:

- ``decide``: a person's verdict on a case, as a correction (it outranks the teacher's
  review everywhere downstream) that is also sent to the case's edge as a ``Review`` from
  ``person:<who>``. Every decision is logged with who made it, when, and what it replaced;
- ``confirm_teacher``: many cases at once, cautiously (what the edge flagged is skipped);
- ``undo``: puts back what the decision replaced (the earlier correction, else the teacher's
  review) and sends that to the edge again.

The queue that asks for decisions is ``teacher.data.queue`` (``Band`` and ``STATES`` are
re-exported here). It uses the store's connection and lock; it knows nothing about
sockets or web pages.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from shared.errors import StoreError
from shared.messages import Review
from teacher.data.queue import STATES, Band

__all__ = ["STATES", "Band", "Decisions", "PERSON", "person_answer"]

PERSON = "person:"


def person_answer(sentence: str | None, safety: bool) -> str | None:
    """A person's sentence in the student's answer format (None stays None)."""
    if sentence is None or not sentence.strip():
        return None
    if sentence.lstrip().startswith("Answer:"):
        return sentence.strip()
    verdict = "yes" if safety else "no"
    return f"Answer: {sentence.strip()}\nSAFETY: {verdict}\nCONFIDENCE: 1.00"


class Decisions:
    _db: sqlite3.Connection
    _lock: threading.Lock
    path: object

    # ------------------------------------------------------------ decisions
    def decide(
        self,
        case_id: str,
        safety: bool,
        who: str,
        answer: str | None = None,
        keywords: list[str] | None = None,
        note: str = "",
        action: str = "correct",
    ) -> int:
        """Record a person's verdict; returns the decision's id (for ``undo``). The edge
        that sent the case gets it as a review from ``person:<who>``."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._standing(case_id)
                self._db.execute(
                    "INSERT OR REPLACE INTO corrections (case_id, safety, answer, keywords, note,"
                    " corrected_at, who, sent) VALUES (?,?,?,?,?,?,?,0)",
                    (
                        case_id,
                        int(safety),
                        answer,
                        None if keywords is None else json.dumps(keywords),
                        note,
                        time.time(),
                        who,
                    ),
                )
                cur = self._db.execute(
                    "INSERT INTO decisions (case_id, who, decided_at, action, safety, answer,"
                    " before) VALUES (?,?,?,?,?,?,?)",
                    (case_id, who, time.time(), action, int(safety), answer, json.dumps(before)),
                )
                self._db.execute("COMMIT")
            except (sqlite3.Error, StoreError):
                self._db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid)

    def confirm_teacher(self, case_ids: list[str], who: str) -> tuple[list[int], dict[str, str]]:
        """A person confirms the teacher's verdict on many cases at once, cautiously: a case
        is skipped (with the reason) when the teacher has no verdict, a person already
        decided it, or the teacher calls safe what the student flagged (alerted, or judged
        unsafe): a hazard buried by a bulk click is the costliest mistake, so those need a
        look one by one. Returns the decision ids and {case id: why skipped}."""
        decided, skipped = [], {}
        for cid in case_ids:
            with self._lock:
                row = self._db.execute(
                    "SELECT teacher, person IS NOT NULL, alert, student FROM case_index"
                    " WHERE case_id=?",
                    (cid,),
                ).fetchone()
            if row is None:
                skipped[cid] = "no such case"
            elif row[0] is None:
                skipped[cid] = "the teacher has no verdict"
            elif row[1]:
                skipped[cid] = "a person already decided it"
            elif not row[0] and (row[2] or row[3]):
                skipped[cid] = "the teacher says safe but the edge flagged it: look at it alone"
            else:
                decided.append(self.decide(cid, bool(row[0]), who, action="confirm"))
        return decided, skipped

    def undo(self, decision_id: int, who: str) -> str:
        """Put back what a decision replaced; the edge gets the standing verdict again.
        Only a case's latest decision can be undone (undo later ones first). Returns the
        case id."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT case_id, before, undone_at FROM decisions WHERE decision_id=?",
                    (decision_id,),
                ).fetchone()
                if row is None:
                    raise StoreError(f"no decision {decision_id} in {self.path}")
                case_id, before, undone = row
                if undone is not None:
                    raise StoreError(f"decision {decision_id} was undone already")
                later = self._db.execute(
                    "SELECT MAX(decision_id) FROM decisions WHERE case_id=? AND undone_at IS NULL",
                    (case_id,),
                ).fetchone()[0]
                if later != decision_id:
                    raise StoreError(
                        f"decision {decision_id} is not the latest on case {case_id}: "
                        f"undo decision {later} first"
                    )
                self._restore(case_id, json.loads(before))
                self._db.execute(
                    "UPDATE decisions SET undone_at=?, undone_by=? WHERE decision_id=?",
                    (time.time(), who, decision_id),
                )
                self._db.execute("COMMIT")
            except (sqlite3.Error, StoreError):
                self._db.execute("ROLLBACK")
                raise
        return case_id

    def decisions(self, case_id: str | None = None, limit: int = 50) -> list[dict]:
        """Decisions, newest first (of one case, or all)."""
        query = (
            "SELECT decision_id, case_id, who, decided_at, action, safety, answer, undone_at,"
            " undone_by FROM decisions"
        )
        args: tuple = ()
        if case_id is not None:
            query += " WHERE case_id=?"
            args = (case_id,)
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY decision_id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        keys = ("decision_id", "case_id", "who", "decided_at", "action", "safety", "answer",
                "undone_at", "undone_by")  # fmt: skip
        return [{**dict(zip(keys, r, strict=True)), "safety": bool(r[5])} for r in rows]

    # ------------------------------------------------------------ what edges get
    def unsent_corrections(self, edge_ids: list[str], limit: int = 500) -> list[tuple[str, Review]]:
        """(edge id, review from ``person:<who>``) of corrections not yet sent to these edges.
        The answer is the person's sentence, else the teacher's when it says the same, else
        one saying a person decided."""
        if not edge_ids:
            return []
        marks = ",".join("?" * len(edge_ids))
        with self._lock:
            rows = self._db.execute(
                "SELECT c.edge_id, k.case_id, k.safety, k.answer, k.keywords, k.who,"
                " k.corrected_at, r.safety, r.answer, r.keywords FROM corrections k"
                " JOIN cases c ON c.case_id=k.case_id LEFT JOIN reviews r ON r.case_id=k.case_id"
                f" WHERE k.sent=0 AND c.edge_id IN ({marks}) ORDER BY k.corrected_at LIMIT ?",
                (*edge_ids, limit),
            ).fetchall()
        out = []
        for edge, cid, safety, answer, kw, who, at, r_safety, r_answer, r_kw in rows:
            if answer is None and r_answer is not None and r_safety == safety:
                answer = r_answer
            if answer is None:
                said = "a hazard" if safety else "no hazard"
                answer = person_answer(f"A person reviewed this case: {said}.", bool(safety))
            keywords = json.loads(kw) if kw else (json.loads(r_kw) if r_kw else [])
            review = Review(
                case_id=cid,
                answer=answer,
                safety=bool(safety),
                keywords=keywords,
                reviewer=f"{PERSON}{who or 'unknown'}",
                reviewed_at=at,
            )
            out.append((edge, review))
        return out

    def mark_corrections_sent(self, case_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE corrections SET sent=1 WHERE case_id=?", [(c,) for c in case_ids]
            )

    # ------------------------------------------------------------ inside a transaction
    def _standing(self, case_id: str) -> dict:
        """What stands on a case now: its correction row (or None); StoreError if no case."""
        if not self._db.execute("SELECT 1 FROM cases WHERE case_id=?", (case_id,)).fetchone():
            raise StoreError(f"no case {case_id!r} in {self.path}")
        row = self._db.execute(
            "SELECT safety, answer, keywords, note, corrected_at, who FROM corrections"
            " WHERE case_id=?",
            (case_id,),
        ).fetchone()
        keys = ("safety", "answer", "keywords", "note", "corrected_at", "who")
        return {"correction": None if row is None else dict(zip(keys, row, strict=True))}

    def _restore(self, case_id: str, before: dict) -> None:
        old = before.get("correction")
        if old is None:
            self._db.execute("DELETE FROM corrections WHERE case_id=?", (case_id,))
            # the teacher's verdict stands again: the edge hears it again
            self._db.execute("UPDATE reviews SET sent=0 WHERE case_id=?", (case_id,))
            return
        self._db.execute(
            "INSERT OR REPLACE INTO corrections (case_id, safety, answer, keywords, note,"
            " corrected_at, who, sent) VALUES (?,?,?,?,?,?,?,0)",
            (
                case_id,
                old["safety"],
                old["answer"],
                old["keywords"],
                old["note"],
                old["corrected_at"],
                old["who"],
            ),  # fmt: skip
        )
