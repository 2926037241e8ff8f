"""llama.cpp itself loads an adapter written by ``gemma-teacher export``, and it takes effect.

Opt-in: needs ``llama-cpp-python`` (it builds llama.cpp from source, minutes), so it is
skipped where that is not installed (CI). ``bench/llamacpp.py`` measures the agreement
with the embedded backend over 20 tokens and the speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llamacpp, pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_llama_cpp_loads_the_exported_adapter_and_it_changes_the_greedy_output(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.llamacpp import INPUTS, make_home
    from shared.models import bundled_gguf
    from shared.skill import default_skill, render_input

    home = make_home(tmp_path, None, 0.02)
    done = subprocess.run(
        [sys.executable, "-m", "teacher", "export", "--home", str(home), "--out",
         str(tmp_path / "export")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    prompt = default_skill().prompt_prefix() + render_input(INPUTS[0])

    def greedy(**kwargs) -> str:
        llm = llama_cpp.Llama(model_path=str(bundled_gguf().path), n_ctx=1024, n_threads=2,
                              verbose=False, **kwargs)  # fmt: skip
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        out = []
        for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(tok)
            if len(out) == 12:
                break
        return llm.detokenize(out).decode("utf-8", errors="replace")

    base = greedy()
    with_adapter = greedy(lora_path=str(tmp_path / "export" / "adapter.gguf"))
    assert base.strip() and with_adapter.strip()
    assert with_adapter != base  # the adapter was applied, not silently ignored
