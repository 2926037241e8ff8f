"""The OpenAI-compatible teacher: reviews per second with N requests in flight, and no
case lost while the engine fails.

    .venv/bin/python bench/openai_reviewer.py          # ~1 min, no model (a fake engine)

A real HTTP server answering as the chat-completions API does (``tests/openai_server.py``)
stands in for vLLM: each request takes ``--latency`` seconds (a large Gemma's review), and
the server serves requests concurrently, as a batching engine does. A real SQLite store
holds ``--cases`` escalations; one ``ReviewWorker`` claims batches of ``max(N, 8)`` and
the ``OpenAIBackend`` sends them N at a time. Reviews per second are against N = 1 in
the same command. Then the engine fails a share of requests (HTTP 500, no retries
inside the backend, so whole batches go back to the store): every case must still be
reviewed exactly once. Prints a table, writes bench/results/openai_reviewer.json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def run(cases: int, in_flight: int, latency: float, fail_rate: float = 0.0) -> dict:
    from shared.config import OpenAIModelConfig
    from shared.messages import Escalation
    from shared.openai_backend import OpenAIBackend
    from teacher.data.store import CaseStore
    from teacher.serve.review import BackendReviewer, ReviewWorker
    from tests.openai_server import FakeOpenAI

    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAI(delay_s=latency, fail_rate=fail_rate) as srv,
    ):
        store = CaseStore(Path(tmp) / "cases.sqlite")
        ids = [uuid.uuid4().hex for _ in range(cases)]
        store.add_cases([(Escalation(case_id=i, edge_id="e1", created_at=time.time(),
                                     source="cam", input=f"scene {n}"), None)
                         for n, i in enumerate(ids)])  # fmt: skip
        cfg = OpenAIModelConfig(base_url=srv.url, model="gemma-3-27b-it",
                                max_in_flight=in_flight, max_retries=0)  # fmt: skip
        backend = OpenAIBackend(cfg)
        delivered: list = []
        worker = ReviewWorker(store, BackendReviewer(backend), delivered.extend,
                              batch_size=max(in_flight, 8))  # fmt: skip
        worker._stop.set()  # step by hand: no idle or back-off sleeps
        t0 = time.perf_counter()
        failed_batches = 0
        while store.count("new") or store.count("claimed"):
            if worker.step() == 0:
                failed_batches += 1
        seconds = time.perf_counter() - t0
        backend.close()
        reviewed = sorted(r.case_id for r in delivered)
        return {
            "in_flight": in_flight,
            "cases": cases,
            "fail_rate": fail_rate,
            "seconds": round(seconds, 3),
            "reviews_per_s": round(cases / seconds, 2),
            "requests": len(srv.requests),
            "max_concurrent": srv.max_concurrent,
            "failed_batches": failed_batches,
            "reviewed_once": reviewed == sorted(ids),
            "stored_reviewed": store.count("reviewed"),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=160)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    args = ap.parse_args()
    rows = [run(args.cases, n, args.latency) for n in (1, 2, 4, 8, 16)]
    base = rows[0]["reviews_per_s"]
    for r in rows:
        r["speedup"] = round(r["reviews_per_s"] / base, 2)
    failing = [run(args.cases, 8, args.latency, rate) for rate in (0.1, 0.3)]
    print("| in flight | reviews/s | vs 1 | most at once | fail rate | batches sent back | "
          "requests | every case reviewed once |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows + failing:
        print(f"| {r['in_flight']} | {r['reviews_per_s']} | {r.get('speedup', '')} | "
              f"{r['max_concurrent']} | {r['fail_rate']} | {r['failed_batches']} | "
              f"{r['requests']} | {r['reviewed_once']} ({r['stored_reviewed']}/{r['cases']}) |")  # fmt: skip
    doc = {"command": "bench/openai_reviewer.py " + " ".join(sys.argv[1:]),
           "latency_s": args.latency, "rows": rows, "failing": failing}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "openai_reviewer.json").write_text(json.dumps(doc, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["in_flight"] for r in rows], [r["reviews_per_s"] for r in rows], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requests in flight (max_in_flight)")
    ax.set_ylabel("reviews / s")
    ax.set_title(f"OpenAI-compatible teacher, {args.latency * 1000:.0f} ms per request")
    fig.tight_layout()
    fig.savefig(RESULTS / "openai_reviewer.png", dpi=120)
    print(f"\nwrote {RESULTS / 'openai_reviewer.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
