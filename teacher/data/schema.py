"""The tables of the teacher's store (``teacher.data.store``), and columns added since.

Every statement is idempotent (``IF NOT EXISTS``); ``ADDED_COLUMNS`` (table, column, type)
are added to a store made before them when it opens, then ``INDEXES`` are made. It knows nothing else.
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    answer TEXT NOT NULL,
    safety INTEGER,
    confidence REAL,
    reasons TEXT NOT NULL,
    safety_keyword INTEGER NOT NULL,
    skill_version INTEGER NOT NULL,
    adapter_version INTEGER NOT NULL,
    frame BLOB,
    status TEXT NOT NULL DEFAULT 'new',
    status_detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cases_status ON cases(status, received_at);
CREATE TABLE IF NOT EXISTS reviews (
    case_id TEXT PRIMARY KEY REFERENCES cases(case_id),
    answer TEXT NOT NULL,
    safety INTEGER NOT NULL,
    keywords TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS reviews_unsent ON reviews(sent, reviewed_at);
CREATE TABLE IF NOT EXISTS edge_counts (
    edge_id TEXT NOT NULL,
    boot REAL NOT NULL,
    release INTEGER NOT NULL,
    inputs INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (edge_id, boot, release)
);
CREATE TABLE IF NOT EXISTS edges (
    edge_id TEXT PRIMARY KEY,
    release INTEGER NOT NULL,
    head_live INTEGER,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settled (
    case_id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    received_at REAL NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    alert INTEGER NOT NULL,
    p_unsafe REAL NOT NULL,
    release_version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS settled_received ON settled(received_at);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL REFERENCES cases(case_id),
    who TEXT NOT NULL,
    decided_at REAL NOT NULL,
    action TEXT NOT NULL,
    safety INTEGER NOT NULL,
    answer TEXT,
    before TEXT NOT NULL,
    undone_at REAL,
    undone_by TEXT
);
CREATE INDEX IF NOT EXISTS decisions_case ON decisions(case_id, decision_id);
CREATE TABLE IF NOT EXISTS corrections (
    case_id TEXT PRIMARY KEY REFERENCES cases(case_id),
    safety INTEGER NOT NULL,
    answer TEXT,
    keywords TEXT,
    note TEXT NOT NULL DEFAULT '',
    corrected_at REAL NOT NULL
);
"""
ADDED_COLUMNS = (
    ("cases", "release_version", "INTEGER NOT NULL DEFAULT 0"),
    ("cases", "p_unsafe", "REAL"),
    ("cases", "alert", "INTEGER NOT NULL DEFAULT 0"),
    ("cases", "audit_p", "REAL"),
    ("edges", "outbox_depth", "INTEGER"),
    ("edges", "push", "TEXT"),
    ("corrections", "who", "TEXT NOT NULL DEFAULT ''"),
    # 1: at its edge (corrections from before this column were never sent, and stay so)
    (
        "corrections",
        "sent",
        "INTEGER NOT NULL DEFAULT 1",
    ),  # JSON: the latest release push and the edge's answer
)
# the console's queue reads the cases no person decided yet, newest releases first
INDEXES = """
CREATE INDEX IF NOT EXISTS cases_release ON cases(release_version, received_at);
"""
