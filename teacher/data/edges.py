"""What edges report besides escalations, kept in the teacher's store.

``EdgeRecords`` is the half of ``teacher.data.store.CaseStore`` that records each edge's
inputs per release since its boot and the release (and head) it says it runs, and reads
them back with every case's release, decision and truth (``gemma-teacher report``); and
the inputs edges settled by themselves (``Settled`` messages), kept apart from the cases:
never reviewed, read back as self-labelled cases by ``train`` (``teacher.data.traffic``).
It uses the store's connection and lock; it knows nothing about sockets.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time


class EdgeRecords:
    _db: sqlite3.Connection
    _lock: threading.Lock

    def add_settled(self, items: list) -> list[bool]:
        """Store ``Settled`` messages in one transaction; True for new, False for a resend."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                fresh = [
                    self._db.execute(
                        "INSERT OR IGNORE INTO settled (case_id, edge_id, created_at, received_at,"
                        " kind, input, alert, p_unsafe, release_version) VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            m.case_id,
                            m.edge_id,
                            m.created_at,
                            now,
                            m.kind,
                            m.input,
                            int(m.alert),
                            m.p_unsafe,
                            m.release_version,
                        ),
                    ).rowcount
                    == 1
                    for m in items
                ]
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        return fresh

    def settled_rows(self, limit: int | None = None) -> list[dict]:
        """The settled inputs, oldest first (the ``limit`` latest)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT case_id, edge_id, input, alert, p_unsafe, release_version FROM settled"
                " ORDER BY received_at DESC, rowid DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        keys = ("case_id", "edge_id", "input", "alert", "p_unsafe", "release")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    def record_counts(self, edge_id: str, boot: float, counts: dict[str, int]) -> None:
        """An edge's inputs answered per release since it started (``boot``)."""
        if not counts:
            return
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT INTO edge_counts (edge_id, boot, release, inputs, updated_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (edge_id, boot, release) DO UPDATE SET"
                " inputs=max(inputs, excluded.inputs), updated_at=excluded.updated_at",
                [(edge_id, boot, int(r), int(n), now) for r, n in counts.items()],
            )

    def record_edge(
        self, edge_id: str, release: int, head_live: bool | None, outbox_depth: int | None = None
    ) -> None:
        """What an edge said it runs (and how many messages wait in its outbox) in its
        latest heartbeat."""
        live = None if head_live is None else int(head_live)
        with self._lock:
            self._db.execute(
                "INSERT INTO edges (edge_id, release, head_live, seen_at, outbox_depth)"
                " VALUES (?,?,?,?,?) ON CONFLICT (edge_id) DO UPDATE SET"
                " release=excluded.release, head_live=excluded.head_live,"
                " seen_at=excluded.seen_at, outbox_depth=excluded.outbox_depth",
                (edge_id, int(release), live, time.time(), outbox_depth),
            )

    def record_push(self, edge_id: str, doc: dict) -> None:
        """The latest release push to an edge and, once it says, whether it installed it:
        ``{"version", "pushed_at", "accepted", "reason"}`` (read by the console's fleet)."""
        with self._lock:
            self._db.execute("UPDATE edges SET push=? WHERE edge_id=?", (json.dumps(doc), edge_id))

    def edges(self) -> list[dict]:
        """Every edge's latest heartbeat: release, head_live (None: not said), seen_at,
        outbox_depth (None: not said) and its latest push (None: none)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT edge_id, release, head_live, seen_at, outbox_depth, push FROM edges"
                " ORDER BY edge_id"
            ).fetchall()
        return [
            {
                "edge_id": e,
                "release": int(r),
                "head_live": None if h is None else bool(h),
                "seen_at": t,
                "outbox_depth": d,
                "push": None if p is None else json.loads(p),
            }
            for e, r, h, t, d, p in rows
        ]

    def input_counts(self) -> dict[tuple[str, int], int]:
        """(edge, release) -> inputs answered, summed over the edge's restarts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT edge_id, release, SUM(inputs) FROM edge_counts GROUP BY edge_id, release"
            ).fetchall()
        return {(edge, int(release)): int(n) for edge, release, n in rows}

    def report_rows(self) -> list[dict]:
        """Every case with its release, decision and truth (a correction, else the review)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.case_id, c.edge_id, c.release_version, c.reasons, c.alert, c.p_unsafe,"
                " c.safety, c.answer, r.safety, k.safety, c.audit_p FROM cases c"
                " LEFT JOIN reviews r ON r.case_id=c.case_id"
                " LEFT JOIN corrections k ON k.case_id=c.case_id ORDER BY c.received_at"
            ).fetchall()
        out = []
        for cid, edge, release, reasons, alert, p, said, answer, reviewed, corrected, ap in rows:
            truth = corrected if corrected is not None else reviewed
            out.append(
                {
                    "case_id": cid,
                    "edge_id": edge,
                    "release": int(release),
                    "reasons": json.loads(reasons),
                    "alert": bool(alert),
                    "p_unsafe": p,
                    "safety": None if said is None else bool(said),
                    "answer": answer,
                    "truth": None if truth is None else bool(truth),
                    "audit_p": ap,
                }
            )
        return out
