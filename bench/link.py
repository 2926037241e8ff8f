"""Benchmark of the edge↔teacher link on loopback, CurveZMQ on, real processes.

    /work/venv/bin/python bench/link.py [--cases 20000] [--edges 2] [--samples 300]

1. Sustained escalations/s into the store, acknowledgements only after commit: the
   edges' outboxes are filled while the teacher is down, then the teacher process
   starts and ``--edges`` edge processes drain them. The rate is cases over the time
   between the store's first and last receipt. Run twice: with the default
   ``server.commit_batch`` (many escalations per transaction) and with
   ``commit_batch: 1`` (one fsync per case), the baseline in the same run.
2. Ack round-trip latency: an in-process LinkClient escalates one case at a time and
   waits for its acknowledgement (outbox commit on the edge, send, store commit on
   the teacher, ack, outbox delete). Also the time ``escalate`` itself takes.

Prints a table, ends with ``ack p50 ms``, ``ack p99 ms`` and ``escalations/s`` lines,
and writes bench/results/link.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge.demo_pair import free_port  # noqa: E402
from edge.link import LinkClient  # noqa: E402
from edge.outbox import Outbox  # noqa: E402
from shared.config import LinkConfig  # noqa: E402
from shared.evaluation import bundled_cases  # noqa: E402
from shared.messages import Escalation  # noqa: E402
from shared.scoring import quantile  # noqa: E402
from teacher.data.store import default_store_path  # noqa: E402
from teacher.serve.keys import init_keys, new_edge  # noqa: E402


def start_teacher(work: Path, keys: Path, endpoint: str, commit_batch: int) -> subprocess.Popen:
    config = work / "teacher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(work / "home"),
                "server": {"bind": endpoint, "keys_dir": str(keys), "commit_batch": commit_batch},
                "reviewer": {
                    "backend": "labels",
                    "labels": str(ROOT / "shared/data/dev_scenes.jsonl"),
                },
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "teacher", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(work / "teacher.log", "a"),
        text=True,
    )
    line = proc.stdout.readline()
    if "serving on" not in line:
        raise SystemExit(f"teacher did not start: {line!r}; see {work / 'teacher.log'}")
    return proc


def throughput(work: Path, keys: Path, names: list[str], per_edge: int, commit_batch: int) -> dict:
    work.mkdir(parents=True)
    inputs = [c.input for c in bundled_cases()]
    for name in names:
        box = Outbox(work / name / "outbox.sqlite", max_cases=10 * per_edge)
        box.put_many(
            [
                (
                    Escalation(
                        case_id=f"{name}-{i:07d}",
                        edge_id=name,
                        created_at=time.time(),
                        source="bench",
                        input=inputs[i % len(inputs)],
                    ),
                    None,
                )
                for i in range(per_edge)
            ]
        )
        box.close()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    teacher = start_teacher(work, keys, endpoint, commit_batch)
    t0 = time.monotonic()
    edges = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests/procs/edge_load.py"),
                "--endpoint",
                endpoint,
                "--edge-id",
                name,
                "--dir",
                str(work / name),
                "--count",
                "0",
                "--secret-key",
                str(keys / "edges" / f"{name}.key_secret"),
                "--teacher-key",
                str(keys / "teacher.key"),
                "--timeout",
                "10",
                "--deadline",
                "600",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for name in names
    ]
    codes = [p.wait() for p in edges]
    wall = time.monotonic() - t0
    teacher.terminate()
    teacher.wait()
    if any(codes):
        raise SystemExit(f"an edge did not drain (exit codes {codes})")
    db = sqlite3.connect(default_store_path(work / "home"))
    n, first, last = db.execute(
        "SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM cases"
    ).fetchone()
    db.close()
    total = per_edge * len(names)
    if n != total:
        raise SystemExit(f"store holds {n} cases, expected {total}")
    return {
        "commit_batch": commit_batch,
        "cases": n,
        "store_s": last - first,
        "wall_s": wall,
        "per_s": n / max(last - first, 1e-9),
    }


def latency(work: Path, keys: Path, samples: int) -> dict:
    work.mkdir(parents=True)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    teacher = start_teacher(work, keys, endpoint, 1000)
    acked = threading.Event()
    config = LinkConfig(
        teacher=endpoint,
        edge_secret_key=keys / "edges" / "bench-lat.key_secret",
        teacher_public_key=keys / "teacher.key",
        outbox=work / "outbox.sqlite",
    )
    link = LinkClient(config, "bench-lat", work / "state", on_ack=lambda cid, dup: acked.set())
    link.start()
    inputs = [c.input for c in bundled_cases()]
    rtt, put, commit = [], [], []
    # Baseline taken between the samples: one SQLite commit (WAL, synchronous=FULL) on
    # the same disk. An ack costs about two (edge outbox + teacher store).
    base = sqlite3.connect(work / "baseline.sqlite", isolation_level=None)
    base.execute("PRAGMA journal_mode=WAL")
    base.execute("PRAGMA synchronous=FULL")
    base.execute("CREATE TABLE t (x)")
    try:
        for i in tqdm(range(samples + 20), desc="ack round trips", leave=False):
            esc = Escalation(
                case_id=f"lat-{i:07d}",
                edge_id="bench-lat",
                created_at=time.time(),
                source="bench",
                input=inputs[i % len(inputs)],
            )
            acked.clear()
            t0 = time.perf_counter()
            link.escalate(esc)
            t1 = time.perf_counter()
            if not acked.wait(30):
                raise SystemExit("no acknowledgement within 30 s")
            t2 = time.perf_counter()
            t3 = time.perf_counter()
            base.execute("BEGIN IMMEDIATE")
            base.execute("INSERT INTO t VALUES (?)", (i,))
            base.execute("COMMIT")
            t4 = time.perf_counter()
            if i >= 20:  # the first ones include connecting and warm-up
                put.append((t1 - t0) * 1000)
                rtt.append((t2 - t0) * 1000)
                commit.append((t4 - t3) * 1000)
    finally:
        link.stop()
        teacher.terminate()
        teacher.wait()
    return {
        "rtt": rtt,
        "samples": len(rtt),
        "ack_p50_ms": quantile(rtt, 0.5),
        "ack_p99_ms": quantile(rtt, 0.99),
        "escalate_p50_ms": quantile(put, 0.5),
        "escalate_p99_ms": quantile(put, 0.99),
        "commit_p50_ms": quantile(commit, 0.5),
    }


def plot(rtt: list[float], batched: dict, single: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ordered = sorted(rtt)
    left.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
    left.set_xscale("log")
    left.set_xticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= ordered[-1] * 2])
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("escalate -> ack round trip (ms, log)")
    left.set_ylabel("share of cases")
    left.set_title("ack latency on loopback (CurveZMQ)")
    left.grid(True, alpha=0.3)
    bars = [batched["per_s"], single["per_s"]]
    right.bar(["commit_batch 1000", "commit_batch 1"], bars, color=["tab:green", "tab:gray"])
    for i, v in enumerate(bars):
        right.text(i, v, f"{v:.0f}/s", ha="center", va="bottom")
    right.set_ylabel("escalations/s into the store (acked after commit)")
    right.set_title("sustained throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", type=int, default=20_000, help="escalations for the throughput runs"
    )
    parser.add_argument(
        "--edges", type=int, default=2, help="edge processes draining their outboxes"
    )
    parser.add_argument("--samples", type=int, default=300, help="ack round trips timed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/link.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        tmp = Path(tmp)
        keys = tmp / "keys"
        init_keys(keys)
        names = [f"bench-{i}" for i in range(args.edges)]
        for name in [*names, "bench-lat"]:
            new_edge(keys, name)
        per_edge = args.cases // args.edges
        print(
            f"throughput: {per_edge * args.edges} cases from {args.edges} edge processes ...",
            flush=True,
        )
        batched = throughput(tmp / "batched", keys, names, per_edge, 1000)
        single = throughput(tmp / "single", keys, names, per_edge, 1)
        print(f"latency: {args.samples} round trips ...", flush=True)
        lat = latency(tmp / "latency", keys, args.samples)
    result = {
        "ack_p50_ms": round(lat["ack_p50_ms"], 3),
        "ack_p99_ms": round(lat["ack_p99_ms"], 3),
        "escalate_p50_ms": round(lat["escalate_p50_ms"], 3),
        "escalate_p99_ms": round(lat["escalate_p99_ms"], 3),
        "sqlite_commit_p50_ms": round(lat["commit_p50_ms"], 3),
        "ack_p50_in_commits": round(lat["ack_p50_ms"] / lat["commit_p50_ms"], 2),
        "escalations_per_s": round(batched["per_s"], 1),
        "escalations_per_s_commit_batch_1": round(single["per_s"], 1),
        "batch_speedup": round(batched["per_s"] / single["per_s"], 2),
        "throughput_runs": [batched, single],
        "latency_samples": lat["samples"],
        "edges": args.edges,
        "curve": True,
        "machine": f"{platform.machine()} {platform.python_version()} cores={__import__('os').cpu_count()}",
        "command": "python bench/link.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(lat["rtt"], batched, single, args.out.with_suffix(".png"))
    rows = [
        ("escalate() (outbox commit), p50 ms", result["escalate_p50_ms"]),
        ("escalate() (outbox commit), p99 ms", result["escalate_p99_ms"]),
        ("baseline: one SQLite commit (fsync), p50 ms", result["sqlite_commit_p50_ms"]),
        ("escalate -> ack round trip, p50 ms", result["ack_p50_ms"]),
        ("ack p50 / commit p50 (same run)", result["ack_p50_in_commits"]),
        ("escalate -> ack round trip, p99 ms", result["ack_p99_ms"]),
        (f"into store, commit_batch 1000 ({args.edges} edges), /s", result["escalations_per_s"]),
        (
            f"into store, commit_batch 1 ({args.edges} edges), /s",
            result["escalations_per_s_commit_batch_1"],
        ),
        ("batching speed-up (same run)", result["batch_speedup"]),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"\nwrote {args.out}")
    print(f"ack p50 ms: {result['ack_p50_ms']}")
    print(f"ack p99 ms: {result['ack_p99_ms']}")
    print(f"escalations/s: {result['escalations_per_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
