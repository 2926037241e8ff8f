"""The head's features of a build's cases (``features``), and those a build has already run,
kept between builds.

Every build runs the student's prefill on every case it fits or calibrates on: the bundled
scenes, the keyword sample, each review and each settled input, most of them the same as
the last build's. With the same student (engine, model, settings), the same request (the
skill's instructions and demonstrations, the input, the layers) and the same adapter
weights, the prefill gives the same hidden states, so a build reads them back instead of
running it again. The key is a digest of exactly those; anything else (another skill,
another adapter, another quantisation, another engine) misses and runs the student.

One SQLite file in the teacher's home (``cache/features.sqlite``), float64 rows as the
student returned them, so a build from the cache fits the same head bit for bit. A row
that does not read back (a short blob, another width) is run again and replaced; the
oldest rows go beyond ``MAX_ROWS``; a cache that cannot be opened, read or written is left
out with a warning and the build runs the student, never fails for it. Only ``hidden``
features are kept (a ``verdict`` feature is a whole answer, not a prefill). The gate never reads it: it scores releases
through the edge's own answer path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.backend import GenerateRequest, hidden_spec
from shared.evaluation import LabeledCase
from shared.head import verdict_logodds
from shared.student import Student

logger = logging.getLogger(__name__)

MAX_ROWS = 200_000  # about 2 GB of 1280-wide rows at most; a build keeps a few thousand
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def student_identity(backend: object, settings: str, adapter_dir: Path | None) -> str:
    """What besides the request decides the features: the engine and model (the backend's
    name and hidden-state spec), the student's settings, the adapter's weights."""
    digest = hashlib.sha256()
    spec = hidden_spec(backend)
    shape = None if spec is None else [spec.engine, spec.num_layers, spec.size]
    name = getattr(backend, "name", type(backend).__name__)
    digest.update(json.dumps([name, shape, settings]).encode())
    if adapter_dir is not None:
        weights = Path(adapter_dir) / ADAPTER_WEIGHTS
        digest.update(weights.read_bytes() if weights.exists() else str(adapter_dir).encode())
    return digest.hexdigest()


def request_key(identity: str, request: GenerateRequest) -> str:
    """The digest of one prefill: the student's identity and the whole request."""
    doc = asdict(request)
    doc["image"] = hashlib.sha256(request.image).hexdigest() if request.image else None
    text = json.dumps(doc, sort_keys=True, default=_plain)
    return hashlib.sha256((identity + text).encode()).hexdigest()


def _plain(value: object) -> object:
    """A request's nested parts (the skill's demonstrations) as plain data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"a request holds a {type(value).__name__}, which the cache cannot key")


class FeatureCache:
    """``get`` the features of request keys it has, ``put`` new ones (one transaction);
    ``hits``: how many rows it has given back since it was opened."""

    def __init__(self, path: Path, max_rows: int = MAX_ROWS):
        self.path = Path(path)
        self.max_rows = max_rows
        self.hits = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, width INTEGER NOT NULL,"
            " data BLOB NOT NULL)"
        )
        self._db.commit()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The rows it has for ``keys``; none (and a warning) when the file cannot be read."""
        found: dict[str, np.ndarray] = {}
        try:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, width, data in self._db.execute(
                    f"SELECT key, width, data FROM features WHERE key IN ({marks})", chunk
                ):
                    if isinstance(data, bytes) and width > 0 and len(data) == 8 * width:
                        found[key] = np.frombuffer(data, dtype="<f8").astype(np.float64)
        except sqlite3.Error as exc:
            logger.warning("feature cache %s unreadable (%s): every case runs the student",
                           self.path, exc)  # fmt: skip
            return {}
        self.hits += len(found)
        return found

    def put(self, rows: dict[str, np.ndarray]) -> None:
        """Keep ``rows``; a write that fails is logged and dropped (the build goes on)."""
        if not rows:
            return
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO features (key, width, data) VALUES (?, ?, ?)",
                    [(k, int(v.size), np.asarray(v, dtype="<f8").tobytes())
                     for k, v in rows.items()],
                )  # fmt: skip
                (count,) = self._db.execute("SELECT COUNT(*) FROM features").fetchone()
                if count > self.max_rows:
                    self._db.execute(
                        "DELETE FROM features WHERE rowid IN (SELECT rowid FROM features "
                        "ORDER BY rowid LIMIT ?)",
                        (count - self.max_rows,),
                    )
        except sqlite3.Error as exc:
            logger.warning("feature cache %s not written (%s)", self.path, exc)

    def close(self) -> None:
        self._db.close()


def open_cache(home: Path) -> FeatureCache | None:
    """The teacher home's feature cache, or None (and a warning) when it cannot be opened:
    a build then runs the student on every case, as without one."""
    try:
        return FeatureCache(Path(home) / "cache" / "features.sqlite")
    except (OSError, sqlite3.Error) as exc:
        logger.warning("feature cache unusable (%s): every case runs the student", exc)
        return None


def features(
    student: Student,
    cases: list[LabeledCase],
    kind: str,
    layers: tuple[int, ...],
    desc: str,
    cache: FeatureCache | None = None,
    identity: str = "",
) -> np.ndarray:
    """The head's inputs for ``cases``, from the release's own prompt and adapter.

    ``hidden``: the request ``Student`` builds, run for its prompt only (the features
    come from the prefill an edge runs before it decodes); with ``cache`` (and the
    student's ``identity``, ``feature_cache.student_identity``), a prefill it already
    ran is read back instead. ``verdict``: a full answer.
    """
    if kind != "hidden":
        rows = []
        for case in tqdm(cases, desc=desc, unit="case", leave=False):
            gen = student.backend.generate(student.request(case.input))
            value = verdict_logodds(gen.text, gen.logprobs)
            rows.append([0.0 if value is None else value])
        return np.asarray(rows, dtype=np.float64)
    requests = [
        replace(student.request(c.input), max_new_tokens=0, hidden_layers=layers) for c in cases
    ]
    keys = [request_key(identity, r) for r in requests] if cache is not None else []
    known = cache.get(keys) if cache is not None else {}
    rows: list = [known.get(k) for k in keys] if keys else [None] * len(cases)
    fresh: dict[str, np.ndarray] = {}
    for i in tqdm([i for i, r in enumerate(rows) if r is None], desc=desc, unit="case",
                  leave=False):  # fmt: skip
        rows[i] = np.asarray(student.backend.generate(requests[i]).hidden, dtype=np.float64)
        if keys:
            fresh[keys[i]] = rows[i]
    if cache is not None:
        cache.put(fresh)
        logger.info("%s: %d of %d cases from the feature cache", desc, len(known), len(cases))
    return np.asarray(rows, dtype=np.float64)
