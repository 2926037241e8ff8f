"""A stand-in edge for kill tests and the link benchmark: escalates N cases, then drains.

    python tests/procs/edge_load.py --endpoint tcp://127.0.0.1:5555 --edge-id e0 \
        --dir /tmp/e0 --count 2500 --rate 150 [--insecure | --secret-key F --teacher-key F]

Case ids are ``<edge-id>-<index>``. After each ``escalate`` returns (the case is on
disk) the index is written to ``<dir>/progress``, so a restarted process resumes
after the last case it escalated; cases queued but unacknowledged when it was killed
must come out of the outbox. Exits 0 once the outbox is empty (prints ``drained``),
3 if ``--deadline`` seconds pass first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.link import LinkClient  # noqa: E402
from shared.config import LinkConfig  # noqa: E402
from shared.evaluation import bundled_cases  # noqa: E402
from shared.messages import Escalation  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--edge-id", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, default=0, help="escalations/s (0: as fast as possible)")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--secret-key", type=Path)
    p.add_argument("--teacher-key", type=Path)
    p.add_argument("--deadline", type=float, default=120)
    p.add_argument("--heartbeat", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"{args.edge_id} %(levelname)s %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    config = LinkConfig(
        teacher=args.endpoint,
        insecure=args.insecure,
        edge_secret_key=args.secret_key,
        teacher_public_key=args.teacher_key,
        heartbeat_s=args.heartbeat,
        timeout_s=args.timeout,
        reconnect_max_s=1.0,
        outbox=args.dir / "outbox.sqlite",
    )
    reviews = []
    link = LinkClient(config, args.edge_id, args.dir / "state", on_review=reviews.append)
    link.start()
    progress = os.open(args.dir / "progress", os.O_RDWR | os.O_CREAT, 0o644)
    done = os.pread(progress, 16, 0).strip()
    start = int(done) + 1 if done else 0
    inputs = [c.input for c in bundled_cases()]
    t0 = time.monotonic()
    for i in range(start, args.count):
        if args.rate:
            delay = t0 + (i - start) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        esc = Escalation(
            case_id=f"{args.edge_id}-{i:06d}",
            edge_id=args.edge_id,
            created_at=time.time(),
            source="load",
            input=inputs[i % len(inputs)],
        )
        link.escalate(esc)
        os.pwrite(progress, f"{i:<15d}\n".encode(), 0)
    print(f"escalated {args.count - start} from {start}", flush=True)
    while link.depth() and time.monotonic() - t0 < args.deadline:
        time.sleep(0.05)
    depth = link.depth()
    link.stop()
    print(f"drained depth={depth} reviews={len(reviews)}", flush=True)
    return 0 if depth == 0 else 3


if __name__ == "__main__":
    raise SystemExit(main())
