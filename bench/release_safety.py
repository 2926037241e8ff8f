"""What the release-safety checks cost, and what they save, measured on this machine.

    .venv/bin/python bench/release_safety.py [--pixels 10000] [--no-model]

1. Canary run (the real embedded Gemma 3 270M): the bundled release v0 carries canaries
   its teacher's harness computed (``gemma-teacher releases build-default``, the teacher's
   backend settings); a default edge's ``check_release`` reruns them through its own
   Student and policy. Reports the largest |p_unsafe edge - teacher| and the canary run's
   time as a ratio to answering one input in the same process.
2. Pixel bomb: a PNG of ``--pixels`` x ``--pixels`` (a small file) read by plain
   ``cv2.imread`` (what the edge did) and by the edge's ``ImageSource`` with the default
   ``gate.max_pixels``, each in its own process: wall time and peak RSS.
3. Wire: ``decode`` of a 32 KB escalation with the nesting scan against ``json.loads``
   alone (ratio, same process), and of a document nested 100,000 deep.

Prints a table and writes bench/results/release_safety.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIXEL_CHILD = r"""
import resource, sys, time
from pathlib import Path
path, how = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import cv2
from edge.sources import open_source
t0 = time.perf_counter()
if how == "imread":
    frame = cv2.imread(path, cv2.IMREAD_COLOR)
    got = None if frame is None else frame.shape
else:
    source = open_source(path)
    got = [i.frame.shape for i in source]
    got = (got, source.oversized)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, peak / 1024, repr(got))
"""


def pixel_bomb(side: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.png"
        make = (
            "import cv2, numpy as np, sys; "
            f"cv2.imwrite(sys.argv[1], np.zeros(({side}, {side}), np.uint8))"
        )
        subprocess.run([sys.executable, "-c", make, str(path)], check=True)
        out = {"side": side, "file_bytes": path.stat().st_size}
        for how in ("imread", "edge"):
            done = subprocess.run(
                [sys.executable, "-c", PIXEL_CHILD, str(path), how],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            dt, rss, got = done.stdout.strip().split(" ", 2)
            out[how] = {"seconds": round(float(dt), 3), "peak_rss_mb": round(float(rss), 1),
                        "result": got}  # fmt: skip
    return out


def wire() -> dict:
    from shared.messages import Escalation, decode, encode

    esc = Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=time.time(),
                     source="bench", input="x" * 16_000, answer="y" * 16_000)  # fmt: skip
    frames = encode(esc)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        json.loads(frames[0])
    plain = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        decode(frames)
    full = (time.perf_counter() - t0) / n
    deep = b'{"type": "heartbeat", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    t0 = time.perf_counter()
    try:
        decode([deep])
        refused = "accepted"
    except Exception as exc:  # noqa: BLE001 - the bench reports what happened
        refused = f"{type(exc).__name__}: {exc}"
    deep_s = time.perf_counter() - t0
    return {
        "doc_bytes": len(frames[0]),
        "json_loads_ms": round(plain * 1000, 3),
        "decode_ms": round(full * 1000, 3),
        "ratio": round(full / plain, 2),
        "deep_100k_ms": round(deep_s * 1000, 2),
        "deep_100k": refused[:120],
    }


def canaries() -> dict:
    from edge.canary import check_release
    from edge.run import start_backend
    from shared.config import EdgeConfig
    from shared.evaluation import bundled_cases
    from shared.release import default_release
    from shared.student import Student

    config = EdgeConfig()
    backend = start_backend(config)  # what gemma-edge run builds
    release = default_release()  # its canaries: the teacher's harness on the frozen members
    student = Student(backend, release, config.model.max_new_tokens)
    probe = bundled_cases("dev_scenes.jsonl")[-1].input
    student.answer(probe)  # warm
    t0 = time.perf_counter()
    student.answer(probe)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = check_release(student, release, config.policy)
    run = time.perf_counter() - t0
    diffs = [abs(student.answer(c.input).answer.p_unsafe - c.p_unsafe)
             for c in release.manifest.canaries]  # fmt: skip
    backend.close()
    return {
        "release": release.version,
        "canaries": len(release.manifest.canaries),
        "hazards": sum(c.unsafe for c in release.manifest.canaries),
        "tolerance": release.manifest.canary_tolerance,
        "problems": problems,
        "max_abs_dp_teacher_vs_edge": max(diffs) if diffs else None,
        "one_input_s": round(one, 3),
        "canary_run_s": round(run, 3),
        "ratio_to_one_input": round(run / one, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixels", type=int, default=10_000)
    ap.add_argument("--no-model", action="store_true", help="skip the canary run")
    ap.add_argument("--out", default=str(ROOT / "bench/results/release_safety.json"))
    args = ap.parse_args()
    doc = {"machine": platform.platform(), "cpus": __import__("os").cpu_count()}
    doc["pixel_bomb"] = pixel_bomb(args.pixels)
    doc["wire"] = wire()
    if not args.no_model:
        doc["canary"] = canaries()
    b, w = doc["pixel_bomb"], doc["wire"]
    rows = [
        ("pixel bomb: cv2.imread", f"{b['imread']['seconds']} s",
         f"{b['imread']['peak_rss_mb']} MB peak RSS"),
        ("pixel bomb: edge ImageSource", f"{b['edge']['seconds']} s",
         f"{b['edge']['peak_rss_mb']} MB peak RSS; {b['edge']['result']}"),
        ("wire: decode / json.loads (32 KB)", f"{w['ratio']}x",
         f"{w['decode_ms']} ms vs {w['json_loads_ms']} ms"),
        ("wire: 100k-deep document", f"{w['deep_100k_ms']} ms", w["deep_100k"][:60]),
    ]  # fmt: skip
    if "canary" in doc:
        c = doc["canary"]
        rows += [
            ("canary run / one input", f"{c['ratio_to_one_input']}x",
             f"{c['canary_run_s']} s for {c['canaries']} canaries ({c['hazards']} hazards)"),
            ("canary |dp| teacher vs edge", f"{c['max_abs_dp_teacher_vs_edge']:.2e}",
             f"tolerance {c['tolerance']}; problems: {c['problems'] or 'none'}"),
        ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"pixel bomb: {b['side']} x {b['side']} PNG of {b['file_bytes']} bytes")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>10}  {note}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
