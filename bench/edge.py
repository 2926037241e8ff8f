"""Per-frame cost of the edge hot path on a real video: decode, gate, sketch, JPEG.

    /work/venv/bin/python bench/edge.py [--video PATH] [--sketch-frames N]

Times are noisy on a shared machine, so each stage is also reported as a ratio to
decoding the frame (measured in the same run). The gate runs on every frame; the sketch
and JPEG only on frames the gate passes, so the cost per *incoming* frame is
decode + gate + pass_rate * (sketch + jpeg). Writes bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import cv2

from edge.gate import FrameGate
from edge.sketch import SceneSketcher, to_jpeg
from shared.config import GateConfig, SketchConfig

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VTEST)
    parser.add_argument("--sketch-frames", type=int, default=30)
    args = parser.parse_args()
    cap = cv2.VideoCapture(str(args.video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {args.video} (apt-get install opencv-doc)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0

    frames, decode_s = [], []
    while True:
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        decode_s.append(time.perf_counter() - t0)
        frames.append(frame)

    gate = FrameGate(GateConfig())
    gate_s, passed = [], []
    for index, frame in enumerate(frames):
        t0 = time.perf_counter()
        result = gate.check(frame, index / fps)
        gate_s.append(time.perf_counter() - t0)
        if result.passed:
            passed.append(frame)

    sketcher = SceneSketcher(SketchConfig())
    sample = passed[: args.sketch_frames]
    sketch_s, jpeg_s = [], []
    for frame in sample:
        t0 = time.perf_counter()
        sketcher.sketch(frame)
        sketch_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        to_jpeg(frame)
        jpeg_s.append(time.perf_counter() - t0)

    decode = statistics.median(decode_s)
    rows = {
        "decode": decode,
        "gate": statistics.median(gate_s),
        "sketch": statistics.median(sketch_s),
        "jpeg": statistics.median(jpeg_s),
    }
    pass_rate = len(passed) / len(frames)
    per_frame = rows["decode"] + rows["gate"] + pass_rate * (rows["sketch"] + rows["jpeg"])
    print(f"{args.video.name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}")
    print(f"gate passed {len(passed)} of {len(frames)} ({pass_rate:.1%}): {gate.stats.to_json()}")
    print(f"{'stage':<8} {'median ms':>10} {'x decode':>9}")
    for name, seconds in rows.items():
        print(f"{name:<8} {seconds * 1000:>10.2f} {seconds / decode:>9.2f}")
    print(
        f"per incoming frame: {per_frame * 1000:.2f} ms -> {1 / per_frame:.0f} frames/s sustained"
    )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "video": str(args.video),
        "frames": len(frames),
        "passed": len(passed),
        "pass_rate": pass_rate,
        "gate_stats": gate.stats.to_json(),
        "median_s": rows,
        "ratio_to_decode": {k: v / decode for k, v in rows.items()},
        "per_incoming_frame_s": per_frame,
        "sketch_frames": len(sample),
        "machine": platform.machine(),
        "cv2": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(),
    }
    (RESULTS / "edge.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'edge.json'}")


if __name__ == "__main__":
    main()
