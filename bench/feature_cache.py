"""Build time with and without the teacher's feature cache (``release.feature_cache``).

    .venv/bin/python bench/feature_cache.py            # the bundled scenes + one round's reviews
    .venv/bin/python bench/feature_cache.py --reviews 160

Three head-only builds in one process, on the default student (llama.cpp, the bundled
Gemma 3 270M), of the same cases (the bundled labelled scenes, the keyword sample, and
``--reviews`` scenes of the demo's factory site as one edge's reviews), in one teacher
home:

1. ``cold``: the cache on and empty (it fills it; the gate also scores v0 once, which the
   registry keeps);
2. ``off``: the cache off: every case runs the student, as before the cache;
3. ``warm``: the cache on and full: the build runs the student only for the gate.

``off`` and ``warm`` differ only in the cache (both gate against the same cached v0), so
their ratio is the cache's effect on a build; both heads must be the same bit for bit.
Prints a table and writes bench/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reviews", type=int, default=80, help="factory scenes as reviews")
    args = ap.parse_args()
    from shared.backend_factory import make_backend
    from shared.evaluation import LabeledCase, bundled_labels
    from shared.teacher_config import TeacherConfig
    from teacher.release.build import build_release
    from teacher.release.registry import ReleaseRegistry

    site = [json.loads(line) for line in (ROOT / "shared/data/demo/scenes.jsonl").open()]
    reviews = [LabeledCase(id=r["id"], input=r["input"], safety=bool(r["safety"]), site="edge-1",
                           origin="teacher") for r in site[: args.reviews]]  # fmt: skip
    cases = bundled_labels() + reviews
    rows, heads = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as tmp:
        cfg = TeacherConfig(home=Path(tmp) / "teacher")
        backend = make_backend(cfg.student)
        for name, on in (("cold", True), ("off", False), ("warm", True)):
            cfg.release.feature_cache = on
            t0 = time.perf_counter()
            built = build_release(cfg, backend, cases, activate=False, keep_refused=True,
                                  progress=False)  # fmt: skip
            seconds = time.perf_counter() - t0
            heads[name] = ReleaseRegistry.of(cfg).get(built.version).head
            t = built.timing
            rows.append(dict(build=name, cache=on, seconds=round(seconds, 1),
                             features_s=t["features_s"], gate_eval_s=t["gate_eval_s"],
                             cases=t["fit_cases"] + t["keyword_sample_cases"],
                             from_cache=t["features_from_cache"]))  # fmt: skip
            print(f"{name}: {rows[-1]}", flush=True)
        backend.close()
    same = bool(np.array_equal(heads["off"].weight, heads["warm"].weight)
                and heads["off"].bias == heads["warm"].bias)  # fmt: skip
    off, warm = rows[1], rows[2]
    print("\n| build | feature cache | build s | head features s | gate s | cases | from cache |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['build']} | {'on' if r['cache'] else 'off'} | {r['seconds']} | "
              f"{r['features_s']} | {r['gate_eval_s']} | {r['cases']} | {r['from_cache']} |")  # fmt: skip
    ratio = warm["seconds"] / off["seconds"]
    print(
        f"\nwarm / off: build {ratio:.2f}x, head features "
        f"{warm['features_s'] / off['features_s']:.3f}x; the same head bit for bit: {same}"
    )
    doc = {"command": "bench/feature_cache.py " + " ".join(sys.argv[1:]), "rows": rows,
           "warm_over_off": round(ratio, 3), "same_head": same}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_cache.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {RESULTS / 'feature_cache.json'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
