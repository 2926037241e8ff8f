"""Benchmark of ``gemma-teacher console`` pages with a large store, over real HTTP.

    python bench/console.py [--cases 100000] [--frames 0.25] [--requests 20]

1. Fills a teacher home: ``--cases`` escalations from 8 edges over 6 releases through the
   store's own ``add_cases``/``add_reviews`` (a share ``--frames`` with a 640x480 JPEG,
   as camera edges send), 80 % reviewed by the teacher, 3 % decided by a person, audits
   among them; each edge's heartbeat and inputs per release; a release registry with
   bands and gate reports.
2. Serves the real console app (``teacher.console.app``) with uvicorn in a thread and
   times each page with a keep-alive HTTP client: the median and p95 of ``--requests``
   requests after two warm-ups. Goal: every page under 200 ms.
3. What the case index (``teacher.data.case_index``) costs the store's writers: microseconds
   per stored case and per review, with and without its triggers, on fresh stores.

Prints a table and writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402

from edge.demo_pair import free_port  # noqa: E402
from shared.calibration import conservative  # noqa: E402
from shared.messages import Escalation, Review  # noqa: E402
from shared.release import build_files, default_release  # noqa: E402
from shared.skill import default_skill  # noqa: E402
from shared.teacher_config import TeacherConfig  # noqa: E402
from teacher.console.app import create_app, open_console  # noqa: E402
from teacher.data.store import CaseStore, default_store_path  # noqa: E402
from teacher.release.registry import ReleaseRegistry  # noqa: E402

EDGES = [f"cam-{i}" for i in range(8)]
RELEASES = 6
REASONS = [["uncertain_safety"], ["safety_keyword"], ["audit"], ["format_error"],
           ["uncertain_safety", "safety_keyword"]]  # fmt: skip
BANDS = {r: (0.1 + 0.02 * r, 0.8 - 0.03 * r) for r in range(RELEASES)}


def jpeg() -> bytes:
    img = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8")
    ok, data = cv2.imencode(
        ".jpg", cv2.GaussianBlur(img, (0, 0), 3), [cv2.IMWRITE_JPEG_QUALITY, 80]
    )
    return data.tobytes()


def fill(home: Path, n: int, frames: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    frame = jpeg()
    store = CaseStore(default_store_path(home))
    store._db.execute("PRAGMA synchronous=OFF")  # a bench fill, not the server's durability
    t0 = time.perf_counter()
    start = time.time() - n
    batch, reviews, decide = [], [], []
    for i in range(n):
        release = min(RELEASES - 1, i * RELEASES // n)
        p = rng.random()
        reasons = rng.choice(REASONS)
        has_frame = rng.random() < frames
        e = Escalation(
            case_id=uuid.uuid4().hex, edge_id=rng.choice(EDGES), created_at=start + i,
            source="rtsp://cam/stream", kind="frame" if has_frame else "text",
            input=f"scene {i}: 2 people near the line {i % 7}, smoke-like colour {p:.2f}",
            answer=f"Answer: a scene.\nSAFETY: {'yes' if p > 0.5 else 'no'}\nCONFIDENCE: 0.70",
            safety=p > 0.5, confidence=0.7, reasons=reasons, release_version=release,
            p_unsafe=p, alert=p > 0.9, audit_p=0.05 if reasons == ["audit"] else None,
            has_frame=has_frame,
        )  # fmt: skip
        batch.append((e, frame if has_frame else None))
        if rng.random() < 0.8:
            truth = p + rng.gauss(0, 0.2) > 0.5
            verdict = "yes" if truth else "no"
            reviews.append(Review(case_id=e.case_id, answer=f"Answer: t.\nSAFETY: {verdict}",
                                  safety=truth, keywords=[], reviewer="labels"))  # fmt: skip
        if rng.random() < 0.03:
            decide.append(e.case_id)
        if len(batch) >= 5000:
            store.add_cases(batch)
            store.add_reviews(reviews)
            batch, reviews = [], []
    store.add_cases(batch)
    store.add_reviews(reviews)
    for cid in decide:
        store.decide(cid, rng.random() < 0.5, "bench")
    for k, edge in enumerate(EDGES):
        store.record_counts(
            edge, 1.0, {str(r): int(n / len(EDGES) / RELEASES * 4) for r in range(RELEASES)}
        )
        store.record_edge(edge, RELEASES - 1 if k else RELEASES - 2, k != 3, k * 3)
    fill_s = time.perf_counter() - t0
    store.close()
    registry = ReleaseRegistry(home)
    head = default_release().head
    for r in range(1, RELEASES):
        cal = conservative().model_copy(update={"lower": BANDS[r][0], "upper": BANDS[r][1]})
        files = build_files(r, default_skill(), head, cal, parent=r - 1)
        doc = {"passed": r != 3, "reasons": [] if r != 3 else ["no gain over the active release"],
               "candidate": {"teacher_calls_per_100": 30.0 - 2 * r, "system_recall": 0.97}}  # fmt: skip
        registry.add(files, doc)
    registry.activate(RELEASES - 1)
    size = default_store_path(home).stat().st_size
    return {
        "cases": n,
        "frames": frames,
        "fill_s": round(fill_s, 1),
        "store_mb": round(size / 2**20),
    }


def serve(home: Path) -> tuple[uvicorn.Server, str]:
    console = open_console(TeacherConfig(home=home))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(console), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def time_pages(base: str, home: Path, requests: int) -> list[dict]:
    store = CaseStore(default_store_path(home), recover=False)
    first = store.queue(limit=1)[0]["case_id"]
    with_frame = store._db.execute(
        "SELECT case_id FROM cases WHERE frame IS NOT NULL LIMIT 1"
    ).fetchone()[0]
    store.close()
    pages = [
        ("queue", "/"),
        ("queue page 200", "/?page=200"),
        ("queue disagreed", "/?state=disagreed"),
        ("queue audits", "/?state=audit"),
        ("queue one edge", "/?edge=cam-3"),
        ("queue one reason", "/?reason=format_error"),
        ("queue decided", "/?state=decided"),
        ("case", f"/case/{first}"),
        ("frame", f"/case/{with_frame}/frame.jpg"),
        ("fleet", "/fleet"),
        ("releases", "/releases"),
        ("flywheel", "/flywheel"),
    ]
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, path in pages:
            times = []
            for i in range(requests + 2):
                t0 = time.perf_counter()
                r = client.get(path)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
                if i >= 2:
                    times.append(dt * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
            out.append({"page": name, "path": path, "median_ms": round(statistics.median(times), 1),
                        "p95_ms": round(p95, 1), "bytes": len(r.content)})  # fmt: skip
    return out


def write_cost(n: int = 10_000, batch: int = 1000) -> dict:
    """Microseconds per case and per review the store's writers pay, with and without the
    case index's triggers (fresh stores; the server's batched transactions)."""
    out = {}
    for label, keep in (("without case index", False), ("with case index", True)):
        with tempfile.TemporaryDirectory() as tmp:
            store = CaseStore(Path(tmp) / "s.sqlite")
            if not keep:
                for (name,) in store._db.execute(
                    "SELECT name FROM sqlite_master WHERE type='trigger'"
                ).fetchall():
                    store._db.execute(f"DROP TRIGGER {name}")
            cases_s = reviews_s = 0.0
            for _ in range(n // batch):
                items = [(Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0,
                                     source="s", input="a scene", p_unsafe=0.3,
                                     reasons=["uncertain_safety"]), None) for _ in range(batch)]  # fmt: skip
                t0 = time.perf_counter()
                store.add_cases(items)
                cases_s += time.perf_counter() - t0
                reviews = [Review(case_id=e.case_id, answer="x", safety=True, keywords=[],
                                  reviewer="t") for e, _ in items]  # fmt: skip
                t0 = time.perf_counter()
                store.add_reviews(reviews)
                reviews_s += time.perf_counter() - t0
            store.close()
        out[label] = {
            "case_us": round(1e6 * cases_s / n, 1),
            "review_us": round(1e6 * reviews_s / n, 1),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--frames", type=float, default=0.25, help="share of cases with a JPEG")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/console.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        home = Path(tmp) / "home"
        print(f"filling a store with {args.cases} cases ...", flush=True)
        store = fill(home, args.cases, args.frames)
        print(f"  {store['fill_s']} s, {store['store_mb']} MB; opening the console ...", flush=True)
        t0 = time.perf_counter()
        server, base = serve(home)
        open_s = time.perf_counter() - t0
        pages = time_pages(base, home, args.requests)
        server.should_exit = True
    cost = write_cost()
    width = max(len(p["page"]) for p in pages)
    print(f"\n{'page':<{width}}  median ms  p95 ms    bytes")
    for p in pages:
        print(f"{p['page']:<{width}}  {p['median_ms']:>9}  {p['p95_ms']:>6}  {p['bytes']:>7}")
    slowest = max(p["p95_ms"] for p in pages)
    print(f"slowest p95: {slowest} ms (goal: every page under 200 ms)")
    for label, c in cost.items():
        print(f"store writes {label}: {c['case_us']} us per case, {c['review_us']} us per review")
    result = {
        "store": store,
        "console_open_s": round(open_s, 2),
        "requests_per_page": args.requests,
        "pages": pages,
        "slowest_p95_ms": slowest,
        "under_200_ms": slowest < 200,
        "store_write_cost": cost,
        "machine": f"{platform.machine()} {platform.python_version()} cores={os.cpu_count()}",
        "command": "python bench/console.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
