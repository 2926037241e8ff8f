"""Does the safety head survive the move to llama.cpp? AUC on scenes no head saw, per engine.

    .venv/bin/python bench/head_engines.py      # ~6 min on a 2-core CPU

The project's own head fit (``shared.head.fit_head``, its default L2) on the 300 bundled
scenes (``shared/data/scenes.jsonl``), features at the last prompt token of the default
skill's prompt, from the forward pass the backend answers with:

- torch (``EmbeddedBackend``), the middle + last layer (today's head), and the last only;
- llama.cpp (``LlamaCppBackend``), the middle layer (through llama.cpp's eval callback)
  + the final-norm state, and the final-norm state alone.

AUC on ``bench/data/heldout_scenes.jsonl`` (160) and on the held-out site
(``bench/data/heldout_site/scenes.jsonl``, 360): neither was used to fit or choose.
Prints a table, writes bench/results/head_engines.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SETS = {
    "bundled (fit)": ROOT / "shared/data/scenes.jsonl",
    "heldout_scenes (160)": ROOT / "bench/data/heldout_scenes.jsonl",
    "held-out site (360)": ROOT / "bench/data/heldout_site/scenes.jsonl",
}


def scenes(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.open() if line.strip()]
    return [r for r in rows if "input" in r and "safety" in r]


def features(backend, layers: tuple[int, ...], texts: list[str]) -> np.ndarray:
    from shared.backend import GenerateRequest
    from shared.skill import default_skill

    skill = default_skill()
    out = []
    for text in texts:
        gen = backend.generate(GenerateRequest(system=skill.instructions, demos=skill.demos,
                                               input=text, max_new_tokens=0,
                                               hidden_layers=layers))  # fmt: skip
        out.append(gen.hidden)
    return np.array(out)


def main() -> int:
    from shared.config import EmbeddedModelConfig, LlamaCppModelConfig
    from shared.head import auc, fit_head

    data = {name: scenes(path) for name, path in SETS.items()}
    t0 = time.time()
    rows = {}
    from shared.llamacpp_backend import LlamaCppBackend

    lc = LlamaCppBackend(LlamaCppModelConfig(threads=2))
    n = lc.hidden.num_layers
    engines = {
        "llama.cpp, middle + last layer (eval callback)": (lc, (n // 2, n), None),
        "llama.cpp, final-norm state only": (lc, (n,), (n // 2, n)),
    }
    from shared.embedded import EmbeddedBackend

    torch_backend = EmbeddedBackend(EmbeddedModelConfig(threads=2))
    engines["torch, middle + last layer (today)"] = (torch_backend, (n // 2, n), None)
    engines["torch, last layer only"] = (torch_backend, (n,), (n // 2, n))
    cache: dict[tuple, dict[str, np.ndarray]] = {}
    for label, (backend, layers, superset) in engines.items():
        asked = superset or layers
        key = (id(backend), asked)
        if key not in cache:
            print(f"features: {label} ...", flush=True)
            cache[key] = {k: features(backend, asked, [s["input"] for s in v])
                          for k, v in data.items()}  # fmt: skip
        x = cache[key]
        if superset is not None:  # the last layer's columns of the two-layer features
            size = x["bundled (fit)"].shape[1] // len(superset)
            i = superset.index(layers[0])
            x = {k: v[:, i * size : (i + 1) * size] for k, v in x.items()}
        y = {k: [bool(s["safety"]) for s in v] for k, v in data.items()}
        head = fit_head(x["bundled (fit)"], y["bundled (fit)"], layers=layers)
        rows[label] = {k: auc(head.p_unsafe_many(x[k]).tolist(), y[k])
                       for k in data if k != "bundled (fit)"}  # fmt: skip
    lc.close()
    names = [k for k in data if k != "bundled (fit)"]
    print("\n| features at the last prompt token | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in names) + " |")
    doc = {"command": "bench/head_engines.py", "seconds": round(time.time() - t0, 1),
           "fit_on": "shared/data/scenes.jsonl (300)", "auc": rows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "head_engines.json").write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {RESULTS / 'head_engines.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
