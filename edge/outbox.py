"""The edge's durable outbox of escalations: on disk before sent, gone only when acked.

One SQLite file in WAL mode with ``synchronous=FULL``: ``put`` commits (and fsyncs)
before it returns, so a case the edge decided to escalate survives a SIGKILL or a
power cut. A row leaves the outbox only when the teacher acknowledges its case id
(``remove``), which the teacher does only after its own store committed it.

The outbox is bounded (``max_cases``). When it is full, the oldest case that is not
safety-relevant is dropped to make room (the oldest safety case only when nothing
else is left); every drop is counted (``dropped``) and logged. A case the teacher
refuses for good (malformed, too large), or a row that no longer holds the escalation
its key names (``edge.link``), moves to a ``dead`` table with the reason, so it is kept
for a person but no longer resent.

At open, ``PRAGMA quick_check``: a damaged file (or one that is not a database) is
moved aside whole as ``<name>.corrupt-<unix time>`` and every row that can still be
read is copied into a fresh outbox, with one log line saying how many were kept and
how many rows could not be read. Only a file that cannot be opened at all (permissions,
a full disk) stops the edge with a one-line error naming it.

Rows keep the escalation's encoded JSON document, so a resend sends the same bytes.
It knows nothing about sockets, the teacher or the daemon.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import StoreError
from shared.messages import Escalation, Settled

SETTLED = -1  # the ``safety`` column of a settled input: the first to go when full

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL UNIQUE,
    doc BLOB NOT NULL,
    frame BLOB,
    safety INTEGER NOT NULL,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_safety ON outbox(safety, seq);
CREATE TABLE IF NOT EXISTS dead (
    case_id TEXT PRIMARY KEY,
    doc BLOB NOT NULL,
    frame BLOB,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


COLUMNS = {
    "outbox": "seq, case_id, doc, frame, safety, queued_at",
    "dead": "case_id, doc, frame, reason, dead_at",
    "counters": "name, value",
}


def _salvage(path: Path) -> tuple[list[tuple[str, tuple]], int]:
    """Every row of a damaged outbox file that can be read: a table scan, and where the
    scan breaks, one lookup per key (each reads only the pages on its own path)."""
    rows: list[tuple[str, tuple]] = []
    lost = 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows, 0
    try:
        for table, columns in COLUMNS.items():
            got: list[tuple] = []
            try:
                got = db.execute(f"SELECT {columns} FROM {table}").fetchall()
            except sqlite3.Error:
                if table == "outbox":
                    got, lost = _rows_by_seq(db, columns)
            rows += [(table, r) for r in got]
    finally:
        db.close()
    return rows, lost


def _rows_by_seq(db: sqlite3.Connection, columns: str) -> tuple[list[tuple], int]:
    top = 0
    for query in ("SELECT MAX(seq) FROM outbox", "SELECT seq FROM sqlite_sequence"):
        try:
            top = max(top, int(db.execute(query).fetchone()[0] or 0))
        except (sqlite3.Error, TypeError, ValueError):
            continue
    got, lost = [], 0
    for seq in range(1, min(top, 10_000_000) + 1):
        try:
            row = db.execute(f"SELECT {columns} FROM outbox WHERE seq=?", (seq,)).fetchone()
        except sqlite3.Error:
            lost += 1
            continue
        if row is not None:
            got.append(row)
    return got, lost


@dataclass(frozen=True)
class Pending:
    """One queued escalation: its order, id, encoded JSON document and optional frame."""

    seq: int
    case_id: str
    doc: bytes
    frame: bytes | None


class Outbox:
    """Durable, bounded queue of escalations keyed by case id. Thread-safe."""

    def __init__(self, path: Path | str, max_cases: int = 100_000):
        self.path = Path(path)
        self.max_cases = max_cases
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from exc
        try:
            self._open()
            problem = self._check()
        except sqlite3.DatabaseError as exc:  # not a database at all, or unreadable
            problem = str(exc)
        if problem is not None:
            self._recover(problem)

    def _open(self) -> None:
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError as exc:  # permissions, a full disk, a lock
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from exc

    def _check(self) -> str | None:
        """``PRAGMA quick_check``: None if the file is sound, else what it found first."""
        rows = self._db.execute("PRAGMA quick_check(5)").fetchall()
        found = [str(r[0]) for r in rows]
        return None if found == ["ok"] else "; ".join(found)

    def _recover(self, problem: str) -> None:
        """A damaged outbox file is moved aside whole (``<name>.corrupt-<time>``) and every
        row that can still be read is copied into a fresh one, so nothing readable is lost
        and the edge keeps escalating."""
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    part.replace(Path(f"{aside}{suffix}"))
        except OSError as exc:
            raise StoreError(
                f"the outbox {self.path} is damaged ({problem}) and cannot be moved aside: {exc}"
            ) from exc
        rows, lost = _salvage(aside)
        self._open()
        kept = {"outbox": 0, "dead": 0}
        self._db.execute("BEGIN IMMEDIATE")
        for table, values in rows:
            marks = ",".join("?" * len(values))
            try:
                n = self._db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", values)
                kept[table] += n.rowcount
            except sqlite3.Error:
                lost += 1
        self._db.execute("COMMIT")
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        logger.error(
            "the outbox %s was damaged (%s): moved to %s; %d queued and %d dead case(s) "
            "recovered into a new outbox, %d unreadable row(s) left behind",
            self.path,
            problem[:200],
            aside.name,
            kept["outbox"],
            kept["dead"],
            lost,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writes
    def put(self, esc: Escalation, frame: bytes | None = None) -> bool:
        """Queue ``esc`` durably (committed before this returns); False if already queued."""
        return self.put_many([(esc, frame)]) == 1

    def put_many(self, items: list[tuple[Escalation | Settled, bytes | None]]) -> int:
        """Queue many cases in one transaction (one fsync); returns how many were new.
        A ``Settled`` input queues like a case, and is dropped before any when full."""
        rows = [
            (
                e.case_id,
                e.model_dump_json().encode(),
                f,
                SETTLED if isinstance(e, Settled) else int(bool(e.safety_keyword or e.safety)),
            )
            for e, f in items
        ]
        added = 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for case_id, doc, frame, safety in rows:
                    n = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (case_id, doc, frame, safety, queued_at)"
                        " VALUES (?,?,?,?,?)",
                        (case_id, doc, frame, safety, time.time()),
                    ).rowcount
                    self._count += n
                    added += n
                    if self._count > self.max_cases:
                        self._drop_oldest_locked()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                raise StoreError(f"cannot queue {len(rows)} case(s) in {self.path}: {exc}") from exc
        return added

    def _drop_oldest_locked(self) -> None:
        row = self._db.execute(
            "SELECT seq, case_id, safety FROM outbox WHERE safety<=0 ORDER BY safety, seq LIMIT 1"
        ).fetchone()
        if row is None:
            row = self._db.execute(
                "SELECT seq, case_id, safety FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
        self._db.execute("DELETE FROM outbox WHERE seq=?", (row[0],))
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES ('dropped', 1)"
            " ON CONFLICT(name) DO UPDATE SET value=value+1"
        )
        self._count -= 1
        logger.warning(
            "outbox full (%s cases): dropped the oldest %s %s",
            self.max_cases,
            {SETTLED: "settled input", 0: "non-safety case"}.get(row[2], "safety case"),
            row[1],
        )

    def drop_settled(self) -> int:
        """Forget every queued settled input (a teacher that does not take them)."""
        with self._lock:
            n = self._db.execute("DELETE FROM outbox WHERE safety=?", (SETTLED,)).rowcount
            self._count -= n
        return n

    def remove(self, case_ids: list[str]) -> int:
        """Forget acknowledged cases in one transaction; returns how many were queued."""
        if not case_ids:
            return 0
        with self._lock:
            # No fsync for deletes: one lost to a power cut only means a resend, which the
            # teacher acknowledges as a duplicate. (WAL keeps it across a process kill.)
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                removed = 0
                for cid in case_ids:
                    removed += self._db.execute(
                        "DELETE FROM outbox WHERE case_id=?", (cid,)
                    ).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot remove acknowledged cases: {exc}") from exc
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            self._count -= removed
        return removed

    def bury(self, case_id: str, reason: str) -> bool:
        """Move a case the teacher refused for good to the dead table (not resent)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                moved = self._db.execute(
                    "INSERT OR REPLACE INTO dead (case_id, doc, frame, reason, dead_at)"
                    " SELECT case_id, doc, frame, ?, ? FROM outbox WHERE case_id=?",
                    (reason, time.time(), case_id),
                ).rowcount
                self._db.execute("DELETE FROM outbox WHERE case_id=?", (case_id,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot move case {case_id} to the dead table: {exc}") from exc
            self._count -= moved
        if moved:
            logger.error("case %s moved to the dead table, not resent: %s", case_id, reason)
        return bool(moved)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # ------------------------------------------------------------ reads
    def after(self, seq: int, limit: int) -> list[Pending]:
        """Up to ``limit`` queued cases with ``seq`` greater than the given one, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, case_id, doc, frame FROM outbox WHERE seq>? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [Pending(*r) for r in rows]

    def get(self, case_id: str) -> Pending | None:
        with self._lock:
            row = self._db.execute(
                "SELECT seq, case_id, doc, frame FROM outbox WHERE case_id=?", (case_id,)
            ).fetchone()
        return Pending(*row) if row else None

    def depth(self) -> int:
        """Cases waiting for an acknowledgement."""
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        """Cases dropped because the outbox was full (over the file's lifetime)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        return row[0] if row else 0

    def dead(self) -> list[tuple[str, str]]:
        """(case id, reason) of cases the teacher refused for good."""
        with self._lock:
            return self._db.execute("SELECT case_id, reason FROM dead ORDER BY dead_at").fetchall()
