"""A tiny, randomly initialised multimodal Gemma 3 as a GGUF + mmproj pair, converted by
llama.cpp's own converter, for the tests of ``model.llamacpp.mmproj``.

    text_gguf, mmproj_gguf = tiny_gemma3_vision()   # built once, then cached

No real multimodal weights can be installed here, so the pair is made:

- **the converter**: ``convert_hf_to_gguf.py`` (with ``conversion/`` and ``gguf-py/``) from
  the llama-cpp-python sdist of the installed version (``pip download``; pip's cache
  usually has it from the install), so it matches the llama.cpp it feeds;
- **the tokenizer**: the bundled Gemma 3 270M's, read from its GGUF by transformers
  (262,144 tokens: the converter recognises it, and it has Gemma's ``<start_of_image>``
  and ``<end_of_image>``, which mtmd puts around an image);
- **the weights**: ``Gemma3ForConditionalGeneration`` initialised by transformers (seed 0)
  on a tiny configuration: text 6 layers 64 wide (the 262k-token embedding is most of the
  49 MB), SigLIP 1 layer 32 wide on 64 x 64 images in 8 x 8 patches, 16 tokens per image.
  transformers starts the projection at zero (every image would look the same), so it is
  drawn at random too; tensors are saved under the checkpoint names the converter knows.

Everything is kept under ``~/.cache/gemma-edge/test-models/`` (about 100 MB with the
tokenizer and the converter), keyed by the recipe and llama-cpp-python's version; model
files are never committed. Without the sdist (no network, no pip cache) the caller skips.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

RECIPE = 1  # bump when the model below changes
CACHE = Path.home() / ".cache" / "gemma-edge" / "test-models"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")


class Unavailable(Exception):
    """The converter could not be fetched (the tests skip, saying why)."""


def tiny_gemma3_vision(cache: Path = CACHE) -> tuple[Path, Path]:
    """(model GGUF, mmproj GGUF) of the tiny model, built on the first call."""
    version = importlib.metadata.version("llama-cpp-python")
    out = cache / f"tiny-gemma3-vision-r{RECIPE}-llama-cpp-python-{version}"
    text, mmproj = out / "model-f16.gguf", out / "mmproj-f16.gguf"
    if text.is_file() and mmproj.is_file():
        return text, mmproj
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if text.is_file() and mmproj.is_file():
            return text, mmproj
        converter = _converter(cache, version)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            hf, stage = Path(tmp) / "hf", Path(tmp) / "out"
            stage.mkdir()
            _run([sys.executable, __file__, str(hf), str(_tokenizer(cache))], "the checkpoint")
            script = str(converter / "convert_hf_to_gguf.py")
            for name, extra in ((text.name, []), (mmproj.name, ["--mmproj"])):
                command = [sys.executable, script, str(hf), "--outtype", "f16"]
                _run([*command, "--outfile", str(stage / name), *extra], f"converting {name}")
            stage.rename(out)
    return text, mmproj


@contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _converter(cache: Path, version: str) -> Path:
    """llama.cpp's converter from the llama-cpp-python sdist, extracted once."""
    folder = cache / f"llama.cpp-converter-{version}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += [f"llama-cpp-python=={version}", "-d", tmp, "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            last = (done.stderr.strip().splitlines() or ["no sdist saved"])[-1]
            raise Unavailable(f"pip could not fetch the llama-cpp-python {version} sdist: {last}")
        stage = Path(tmp) / "converter"
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                _, _, rel = member.name.partition("/vendor/llama.cpp/")
                if not member.isfile() or ".." in rel or not rel.startswith(CONVERTER_FILES):
                    continue
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                (stage / rel).write_bytes(tar.extractfile(member).read())
        if not (stage / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdists[0].name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        stage.rename(folder)
    return folder


def _tokenizer(cache: Path) -> Path:
    """The bundled Gemma 3 270M's tokenizer as tokenizer.json, made once (~40 s)."""
    folder = cache / "gemma3-tokenizer"
    if (folder / "tokenizer.json").is_file():
        return folder
    from shared.models import bundled_gguf

    gguf = bundled_gguf().path
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        stage = Path(tmp) / "tokenizer"
        code = (
            "import sys; from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2])"
            ".save_pretrained(sys.argv[3])"
        )
        _run([sys.executable, "-c", code, str(gguf.parent), gguf.name, str(stage)], "tokenizer")
        stage.rename(folder)
    return folder


def _checkpoint(folder: Path, tokenizer: Path) -> None:
    """The tiny Gemma3ForConditionalGeneration as a Hugging Face folder (run in a child)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    text = dict(
        model_type="gemma3_text",
        vocab_size=262_144,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,  # llama.cpp's Gemma 3: five sliding-window layers, one global
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=64,
        max_position_embeddings=4096,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        vision_use_head=False,
    )
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=16)
    Gemma3ForConditionalGeneration(config).save_pretrained(folder)
    state = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.endswith("mm_input_projection_weight"):
            tensor = torch.randn(tensor.shape) * 0.02  # transformers starts it at zero
        if name.startswith("vision_tower.") and ".vision_model." not in name:
            name = "vision_tower.vision_model." + name[len("vision_tower.") :]  # as Google's
        state[name] = tensor
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    preprocessor = {
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": 16,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"height": 64, "width": 64},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)


if __name__ == "__main__":
    _checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))
