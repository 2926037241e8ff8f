"""One compact row per stored case: what the review queue, the fleet and the flywheel read.

The ``cases`` table is wide (a JPEG frame sits in most camera cases) and a case's
verdicts live in two more tables, so ordering 100,000 cases by worth, or counting them
per state, by joining the three would read hundreds of megabytes per page. Instead
``case_index`` keeps, per case, the few values those pages need::

    edge_id, received_at, release, reasons, alert, audit_p   as the edge sent them
    p        p(unsafe): the head's, else from the SAFETY line and its confidence
    student  the student's verdict (its head at 0.5, else SAFETY), as shared.scoring has it
    lo, hi   its release's escalation band (0.5, 0.5 until the band is known)
    teacher  the teacher's review (NULL: no verdict yet)
    person   a person's decision (NULL: undecided), decided_at its time
    worth    how much a person's verdict is worth (``teacher.data.decisions``)

SQLite triggers keep it in step with every write to ``cases``, ``reviews`` and
``corrections``, whichever process or code path makes it (the server, ``cases correct``,
the console), inside the writer's own transaction. ``bands`` holds each release's
escalation band (written by whoever reads the release registry: the console); a band
that changes re-scores that release's cases. A store made before this table is indexed
once when it opens (``ensure``).

It knows nothing about releases, sockets or pages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

logger = logging.getLogger(__name__)

TABLES = """
CREATE TABLE IF NOT EXISTS case_index (
    case_id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    release INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    alert INTEGER NOT NULL,
    audit_p REAL,
    p REAL,
    student INTEGER,
    lo REAL NOT NULL DEFAULT 0.5,
    hi REAL NOT NULL DEFAULT 0.5,
    teacher INTEGER,
    person INTEGER,
    decided_at REAL,
    worth REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS case_index_todo ON case_index(worth, received_at)
    WHERE person IS NULL;
CREATE INDEX IF NOT EXISTS case_index_decided ON case_index(decided_at)
    WHERE person IS NOT NULL;
CREATE INDEX IF NOT EXISTS case_index_edge ON case_index(edge_id, release);
CREATE INDEX IF NOT EXISTS case_index_audits ON case_index(release, person, teacher, audit_p)
    WHERE reasons = '["audit"]' AND alert = 0;
CREATE TABLE IF NOT EXISTS bands (
    release INTEGER PRIMARY KEY,
    lower REAL NOT NULL,
    upper REAL NOT NULL
);
"""


# ---------------------------------------------------------------- worth
def worth(p: str, student: str, teacher: str, audit_p: str, lo: str, hi: str) -> str:
    """The SQL of a case's worth (``teacher.data.queue``) from these SQL expressions."""
    disagree = f"({teacher} IS NOT NULL AND ({student} IS NULL OR {student} != {teacher}))"
    close = (
        f"(CASE WHEN {p} IS NULL THEN 0.5 WHEN {p} BETWEEN {lo} AND {hi} THEN 1.0"
        f" ELSE 1.0 - 2 * MIN(0.5, MIN(ABS({p} - {lo}), ABS({p} - {hi}))) END)"
    )
    return (
        f"(4 * {disagree} + ({disagree} AND {teacher} = 1) + 3 * ({teacher} IS NULL)"
        f" + ({audit_p} IS NOT NULL) + {close})"
    )


# over case_index's own columns (lo, hi: its release's band, 0.5 while none is known)
WORTH = worth("p", "student", "teacher", "audit_p", "lo", "hi")
DISAGREE = "(teacher IS NOT NULL AND (student IS NULL OR student != teacher))"
NO_VERDICT = "(teacher IS NULL)"
AUDIT = "(audit_p IS NOT NULL)"
# an input the release passed and the audit alone drew (shared.scoring.Outcome.audited)
AUDITED = """reasons = '["audit"]' AND alert = 0"""
TRUTH = "COALESCE(person, teacher)"
# a hazard caught outside the audits: truth (a person's, else the teacher's) a hazard, or
# unknown on an alert (shared.scoring.audit_estimate)
CAUGHT = f"""(CASE WHEN {AUDITED} THEN 0 WHEN person IS NOT NULL THEN person
    WHEN teacher IS NOT NULL THEN teacher ELSE alert END)"""


def _p(c: str) -> str:
    """p(unsafe) of a cases row: its head's, else its SAFETY line weighed by confidence."""
    return (
        f"COALESCE({c}.p_unsafe, CASE {c}.safety WHEN 1 THEN {c}.confidence"
        f" WHEN 0 THEN 1 - {c}.confidence END)"
    )


def _student(c: str) -> str:
    """The student's verdict as shared.scoring.student_verdict: its head at 0.5, else SAFETY."""
    return f"(CASE WHEN {c}.p_unsafe IS NOT NULL THEN {c}.p_unsafe >= 0.5 ELSE {c}.safety END)"


def _band(side: str, release: str) -> str:
    return f"COALESCE((SELECT {side} FROM bands WHERE release = {release}), 0.5)"


# One statement per write, no lookups beyond the band: a case arrives before its review
# (the server stores it, then reviews it); the rare case stored after its verdicts (an
# index rebuilt by hand) is caught by case_index_late. v1 in every name: a changed
# definition gets new names, and ``ensure`` drops the old ones.
TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS case_index_add_v1 AFTER INSERT ON cases BEGIN
    INSERT OR REPLACE INTO case_index (case_id, edge_id, received_at, release, reasons, alert,
        audit_p, p, student, lo, hi, worth)
    SELECT NEW.case_id, NEW.edge_id, NEW.received_at, NEW.release_version, NEW.reasons,
        NEW.alert, NEW.audit_p, x.p, x.student, x.lo, x.hi,
        {worth("x.p", "x.student", "NULL", "NEW.audit_p", "x.lo", "x.hi")}
    FROM (SELECT {_p("NEW")} AS p, {_student("NEW")} AS student,
        {_band("lower", "NEW.release_version")} AS lo,
        {_band("upper", "NEW.release_version")} AS hi) x;
END;
CREATE TRIGGER IF NOT EXISTS case_index_late_v1 AFTER INSERT ON cases
WHEN EXISTS (SELECT 1 FROM reviews WHERE case_id = NEW.case_id)
    OR EXISTS (SELECT 1 FROM corrections WHERE case_id = NEW.case_id) BEGIN
    UPDATE case_index SET
        teacher = (SELECT safety FROM reviews WHERE case_id = NEW.case_id),
        person = (SELECT safety FROM corrections WHERE case_id = NEW.case_id),
        decided_at = (SELECT corrected_at FROM corrections WHERE case_id = NEW.case_id)
    WHERE case_id = NEW.case_id;
    UPDATE case_index SET worth = {WORTH} WHERE case_id = NEW.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_review_v1 AFTER INSERT ON reviews BEGIN
    UPDATE case_index SET teacher = NEW.safety,
        worth = {worth("p", "student", "NEW.safety", "audit_p", "lo", "hi")}
    WHERE case_id = NEW.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_review_change_v1
AFTER UPDATE OF safety ON reviews BEGIN
    UPDATE case_index SET teacher = NEW.safety,
        worth = {worth("p", "student", "NEW.safety", "audit_p", "lo", "hi")}
    WHERE case_id = NEW.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_decide_v1 AFTER INSERT ON corrections BEGIN
    UPDATE case_index SET person = NEW.safety, decided_at = NEW.corrected_at
    WHERE case_id = NEW.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_redecide_v1
AFTER UPDATE OF safety, corrected_at ON corrections BEGIN
    UPDATE case_index SET person = NEW.safety, decided_at = NEW.corrected_at
    WHERE case_id = NEW.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_undecide_v1 AFTER DELETE ON corrections BEGIN
    UPDATE case_index SET person = NULL, decided_at = NULL WHERE case_id = OLD.case_id;
END;
CREATE TRIGGER IF NOT EXISTS case_index_band_v1 AFTER INSERT ON bands BEGIN
    UPDATE case_index SET lo = NEW.lower, hi = NEW.upper,
        worth = {worth("p", "student", "teacher", "audit_p", "NEW.lower", "NEW.upper")}
    WHERE release = NEW.release;
END;
CREATE TRIGGER IF NOT EXISTS case_index_band_change_v1 AFTER UPDATE ON bands BEGIN
    UPDATE case_index SET lo = NEW.lower, hi = NEW.upper,
        worth = {worth("p", "student", "teacher", "audit_p", "NEW.lower", "NEW.upper")}
    WHERE release = NEW.release;
END;
"""
_VERSION = "_v1"

BACKFILL = f"""
INSERT OR IGNORE INTO case_index (case_id, edge_id, received_at, release, reasons, alert,
    audit_p, p, student, lo, hi, teacher, person, decided_at)
SELECT c.case_id, c.edge_id, c.received_at, c.release_version, c.reasons, c.alert, c.audit_p,
    {_p("c")}, {_student("c")}, {_band("lower", "c.release_version")},
    {_band("upper", "c.release_version")}, r.safety, k.safety, k.corrected_at
FROM cases c LEFT JOIN reviews r ON r.case_id = c.case_id
LEFT JOIN corrections k ON k.case_id = c.case_id
WHERE c.case_id NOT IN (SELECT case_id FROM case_index);
"""


def ensure(db: sqlite3.Connection) -> None:
    """Make the table, its indexes and triggers; index the cases a store made before them
    holds (once: one transaction, about a second per 100,000 cases)."""
    db.executescript(TABLES)
    stale = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='trigger' AND name LIKE 'case_index_%'"
        )
        if not name.endswith(_VERSION)
    ]
    for name in stale:
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    db.executescript(TRIGGERS)
    cases = db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
    indexed = db.execute("SELECT COUNT(*) FROM case_index").fetchone()[0]
    if cases != indexed:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(BACKFILL)
            db.execute(f"UPDATE case_index SET worth = {WORTH}")
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        logger.info("indexed %d stored case(s) for the review queue", cases - indexed)


class CaseIndex:
    """Reads of ``case_index`` besides the queue (``Decisions``); uses the store's lock."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def set_bands(self, bands) -> int:
        """Record releases' escalation bands (``Band``s); a changed band re-scores its
        release's cases. Returns how many bands changed."""
        with self._lock:
            have = {r: (lo, hi) for r, lo, hi in self._db.execute("SELECT * FROM bands")}
            new = [
                (b.release, b.lower, b.upper)
                for b in bands
                if have.get(b.release) != (b.lower, b.upper)
            ]
            if new:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO bands (release, lower, upper) VALUES (?,?,?) ON CONFLICT"
                        " (release) DO UPDATE SET lower=excluded.lower, upper=excluded.upper",
                        new,
                    )
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._db.execute("ROLLBACK")
                    raise
        return len(new)

    def calls_by_edge_release(self) -> dict[tuple[str, int], int]:
        """(edge, release) -> escalations stored (each one a teacher call)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT edge_id, release, COUNT(*) FROM case_index GROUP BY edge_id, release"
            ).fetchall()
        return {(e, int(r)): int(n) for e, r, n in rows}

    def release_evidence(self) -> dict[int, dict]:
        """Per release, what ``shared.scoring.estimate_recall`` reads from its escalations:
        ``calls`` (all of them), ``caught`` (hazards caught outside the audits: truth a
        hazard, or unknown on an alert), ``passed`` (inputs the release passed that an
        audit drew), ``audited`` (those with a verdict) and ``found`` (the ``audit_p`` of
        each hazard among them). Truth: a person's verdict, else the teacher's."""
        with self._lock:
            counts = self._db.execute(
                f"SELECT release, COUNT(*), SUM({CAUGHT}) FROM case_index GROUP BY release"
            ).fetchall()
            audits = self._db.execute(
                f"SELECT release, {TRUTH}, audit_p FROM case_index WHERE {AUDITED}"
            ).fetchall()
        out = {
            int(r): {"calls": int(n), "caught": int(c or 0), "passed": 0, "audited": 0,
                     "found": []}
            for r, n, c in counts
        }  # fmt: skip
        for release, truth, audit_p in audits:
            doc = out[int(release)]
            doc["passed"] += 1
            if truth is not None and audit_p:
                doc["audited"] += 1
                if truth:
                    doc["found"].append(audit_p)
        return out
