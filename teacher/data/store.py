"""The teacher's SQLite store of escalated cases, reviews and a person's corrections.

One file in WAL mode. ``add_cases`` commits before it returns, so the server acks
only what is on disk; a case id seen before is reported as a duplicate and not
stored twice. A correction by a person outranks the teacher's review everywhere
downstream (``labeled_cases`` feeds datasets and evaluation sets).

The tables are in ``teacher.data.schema``; a person's decisions are kept by
``teacher.data.decisions``, and the review queue is read by ``teacher.data.queue`` from
the compact per-case index that ``teacher.data.case_index`` keeps; what edges report in
heartbeats (inputs per release, release and head) is kept and read by
``teacher.data.edges``.

Case status: ``new`` → ``reviewing`` (claimed by a worker) → ``reviewed`` |
``unreviewable`` (the reviewer had no answer, e.g. no label). Claims left by a
killed process go back to ``new`` when the store opens.

It knows nothing about sockets or models.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import StoreError
from shared.evaluation import LabeledCase
from shared.messages import Escalation, Review
from teacher.data import case_index
from teacher.data.case_index import CaseIndex
from teacher.data.decisions import Decisions
from teacher.data.edges import EdgeRecords
from teacher.data.queue import ReviewQueue
from teacher.data.schema import ADDED_COLUMNS, INDEXES, SCHEMA


def default_store_path(home: Path | str) -> Path:
    """Where the teacher keeps its store under ``TeacherConfig.home``."""
    return Path(home) / "store.sqlite"


@dataclass(frozen=True)
class StoredCase:
    case_id: str
    edge_id: str
    created_at: float
    received_at: float
    source: str
    kind: str
    input: str
    answer: str
    safety: bool | None
    confidence: float | None
    reasons: list[str]
    safety_keyword: bool
    status: str
    status_detail: str
    has_frame: bool


class CaseStore(EdgeRecords, Decisions, ReviewQueue, CaseIndex):
    def __init__(self, path: Path | str, recover: bool = True):
        """Open (or create) the store. ``recover``: give claims left by a killed process
        back to ``new``; only the process that runs the review workers should (the
        server), not a CLI that opens the store beside it."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
            for table, column, kind in ADDED_COLUMNS:
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:  # a store from an older version
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._db.executescript(INDEXES)
            case_index.ensure(self._db)
            if recover:
                self._db.execute("UPDATE cases SET status='new' WHERE status='reviewing'")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the case store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writes
    def add_cases(self, items: list[tuple[Escalation, bytes | None]]) -> list[bool]:
        """Store escalations in one transaction; True for new, False for a duplicate id."""
        now = time.time()
        result = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for esc, frame in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO cases (case_id, edge_id, created_at, received_at,"
                        " source, kind, input, answer, safety, confidence, reasons,"
                        " safety_keyword, skill_version, adapter_version, frame,"
                        " release_version, p_unsafe, alert, audit_p)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            esc.case_id,
                            esc.edge_id,
                            esc.created_at,
                            now,
                            esc.source,
                            esc.kind,
                            esc.input,
                            esc.answer,
                            None if esc.safety is None else int(esc.safety),
                            esc.confidence,
                            json.dumps(esc.reasons),
                            int(esc.safety_keyword),
                            esc.skill_version,
                            esc.adapter_version,
                            frame,
                            esc.release_version,
                            esc.p_unsafe,
                            int(esc.alert),
                            esc.audit_p,
                        ),
                    )
                    result.append(cur.rowcount == 1)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"storing {len(items)} case(s) failed: {exc}") from exc
        return result

    def add_case(self, esc: Escalation, frame: bytes | None = None) -> bool:
        return self.add_cases([(esc, frame)])[0]

    def claim_unreviewed(self, limit: int) -> list[StoredCase]:
        """Up to ``limit`` new cases, oldest first, marked as being reviewed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM cases WHERE status='new' ORDER BY received_at LIMIT ?",
                (limit,),
            ).fetchall()
            self._db.executemany(
                "UPDATE cases SET status='reviewing' WHERE case_id=?", [(r[0],) for r in rows]
            )
            self._db.execute("COMMIT")
        return [_case(r) for r in rows]

    def add_review(self, review: Review) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO reviews (case_id, answer, safety, keywords, reviewer,"
                " reviewed_at, sent) VALUES (?,?,?,?,?,?,0)",
                (
                    review.case_id,
                    review.answer,
                    int(review.safety),
                    json.dumps(review.keywords),
                    review.reviewer,
                    review.reviewed_at,
                ),
            )
            self._db.execute(
                "UPDATE cases SET status='reviewed', status_detail='' WHERE case_id=?",
                (review.case_id,),
            )
            self._db.execute("COMMIT")

    def add_reviews(self, reviews: list[Review], unreviewable: list[tuple[str, str]] = ()) -> None:
        """Store many reviews and (case id, reason) unreviewable marks in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT OR REPLACE INTO reviews (case_id, answer, safety, keywords,"
                    " reviewer, reviewed_at, sent) VALUES (?,?,?,?,?,?,0)",
                    [
                        (
                            r.case_id,
                            r.answer,
                            int(r.safety),
                            json.dumps(r.keywords),
                            r.reviewer,
                            r.reviewed_at,
                        )
                        for r in reviews
                    ],
                )
                self._db.executemany(
                    "UPDATE cases SET status='reviewed', status_detail='' WHERE case_id=?",
                    [(r.case_id,) for r in reviews],
                )
                self._db.executemany(
                    "UPDATE cases SET status='unreviewable', status_detail=? WHERE case_id=?",
                    [(reason, cid) for cid, reason in unreviewable],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"storing {len(reviews)} review(s) failed: {exc}") from exc

    def unsent_reviews(self, edge_ids: list[str], limit: int = 500) -> list[tuple[str, Review]]:
        """(edge id, review) of stored reviews not yet sent to these edges, oldest first."""
        if not edge_ids:
            return []
        marks = ",".join("?" * len(edge_ids))
        with self._lock:
            rows = self._db.execute(
                "SELECT c.edge_id, r.case_id, r.answer, r.safety, r.keywords, r.reviewer,"
                " r.reviewed_at FROM reviews r JOIN cases c ON c.case_id=r.case_id"
                f" WHERE r.sent=0 AND c.edge_id IN ({marks}) ORDER BY r.reviewed_at LIMIT ?",
                (*edge_ids, limit),
            ).fetchall()
        return [
            (
                edge,
                Review(
                    case_id=cid,
                    answer=answer,
                    safety=bool(safety),
                    keywords=json.loads(keywords),
                    reviewer=reviewer,
                    reviewed_at=at,
                ),
            )
            for edge, cid, answer, safety, keywords, reviewer, at in rows
        ]

    def mark_reviews_sent(self, case_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE reviews SET sent=1 WHERE case_id=?", [(c,) for c in case_ids]
            )
            self._db.execute("COMMIT")

    def mark_unreviewable(self, case_id: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE cases SET status='unreviewable', status_detail=? WHERE case_id=?",
                (reason, case_id),
            )

    def release(self, case_id: str) -> None:
        """Give a claimed case back (the reviewer failed; another try later)."""
        with self._lock:
            self._db.execute(
                "UPDATE cases SET status='new' WHERE case_id=? AND status='reviewing'", (case_id,)
            )

    def mark_review_sent(self, case_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE reviews SET sent=1 WHERE case_id=?", (case_id,))

    def correct(
        self,
        case_id: str,
        safety: bool,
        answer: str | None = None,
        keywords: list[str] | None = None,
        note: str = "",
        who: str = "cli",
    ) -> int:
        """A person's verdict; it outranks the teacher's review downstream and reaches the
        case's edge as a review (``Decisions.decide``). Returns the decision's id."""
        return self.decide(case_id, safety, who, answer, keywords, note)

    # ------------------------------------------------------------ reads
    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                return self._db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
            return self._db.execute(
                "SELECT COUNT(*) FROM cases WHERE status=?", (status,)
            ).fetchone()[0]

    def case_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT case_id FROM cases")]

    def get(self, case_id: str) -> dict | None:
        """The case with its review and correction, as plain data (for ``cases show``)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM cases WHERE case_id=?", (case_id,)
            ).fetchone()
            if row is None:
                return None
            review = self._db.execute(
                "SELECT answer, safety, keywords, reviewer, reviewed_at FROM reviews"
                " WHERE case_id=?",
                (case_id,),
            ).fetchone()
            correction = self._db.execute(
                "SELECT safety, answer, keywords, note, corrected_at FROM corrections"
                " WHERE case_id=?",
                (case_id,),
            ).fetchone()
        doc = _case(row).__dict__.copy()
        doc["review"] = review and {
            "answer": review[0],
            "safety": bool(review[1]),
            "keywords": json.loads(review[2]),
            "reviewer": review[3],
            "reviewed_at": review[4],
        }
        doc["correction"] = correction and {
            "safety": bool(correction[0]),
            "answer": correction[1],
            "keywords": None if correction[2] is None else json.loads(correction[2]),
            "note": correction[3],
            "corrected_at": correction[4],
        }
        return doc

    def frame(self, case_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT frame FROM cases WHERE case_id=?", (case_id,)).fetchone()
        return row[0] if row else None

    def list_cases(self, status: str | None = None, limit: int = 50) -> list[StoredCase]:
        query = f"SELECT {_COLUMNS} FROM cases"
        args: tuple = ()
        if status:
            query += " WHERE status=?"
            args = (status,)
        query += " ORDER BY received_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [_case(r) for r in rows]

    def labeled_cases(self) -> list[LabeledCase]:
        """Reviewed or corrected cases as labels; a person's correction outranks the teacher."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.case_id, c.input, r.answer, r.safety, r.keywords,"
                " k.safety, k.answer, k.keywords, c.edge_id"
                " FROM cases c LEFT JOIN reviews r ON r.case_id=c.case_id"
                " LEFT JOIN corrections k ON k.case_id=c.case_id"
                " WHERE r.case_id IS NOT NULL OR k.case_id IS NOT NULL"
                " ORDER BY c.received_at"
            ).fetchall()
        cases = []
        for cid, text, r_answer, r_safety, r_kw, k_safety, k_answer, k_kw, site in rows:
            if k_safety is not None:
                keywords = json.loads(k_kw) if k_kw else (json.loads(r_kw) if r_kw else [])
                answer = k_answer
                if answer is None and r_answer is not None and bool(r_safety) == bool(k_safety):
                    answer = r_answer
                cases.append(
                    LabeledCase(cid, text, bool(k_safety), tuple(keywords), answer, "person", site)
                )
            else:
                cases.append(
                    LabeledCase(
                        cid,
                        text,
                        bool(r_safety),
                        tuple(json.loads(r_kw)),
                        r_answer,
                        "teacher",
                        site,
                    )
                )
        return cases


_COLUMNS = (
    "case_id, edge_id, created_at, received_at, source, kind, input, answer, safety, confidence,"
    " reasons, safety_keyword, status, status_detail, frame IS NOT NULL"
)


def _case(row: tuple) -> StoredCase:
    """A ``_COLUMNS`` row as a StoredCase (SQLite ints and JSON text back to Python)."""
    safety, confidence, reasons, keyword, status, detail, has_frame = row[8:]
    return StoredCase(
        *row[:8],
        None if safety is None else bool(safety),
        confidence,
        json.loads(reasons),
        bool(keyword),
        status,
        detail,
        bool(has_frame),
    )
