import json
import shutil

import pytest

from shared.errors import ModelCacheError
from shared.models import GGUFWeights, _sha256_file, cache_path, ensure_cache, verify_cache


def fake_converter(calls):
    def convert(weights, target):
        calls.append(target)
        tmp = target.with_name(target.name + ".partial")
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_bytes(b"weights" * 100)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256_file(p)} for p in tmp.iterdir()
        }
        (tmp / "manifest.json").write_text(json.dumps({"format": 1, "files": files}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)

    return convert


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF fake")
    return path


def test_converts_once_then_reuses(tmp_path, gguf):
    calls = []
    first = ensure_cache(gguf, tmp_path / "cache", converter=fake_converter(calls))
    second = ensure_cache(gguf, tmp_path / "cache", converter=fake_converter(calls))
    assert first == second
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing_file"])
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, gguf, damage):
    calls = []
    folder = ensure_cache(gguf, tmp_path / "cache", converter=fake_converter(calls))
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:10])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (folder / "manifest.json").unlink()
    else:
        weights.unlink()
    with pytest.raises(ModelCacheError):
        verify_cache(folder)
    again = ensure_cache(gguf, tmp_path / "cache", converter=fake_converter(calls))
    assert len(calls) == 2
    verify_cache(again)


def test_cache_key_is_the_gguf_hash(tmp_path):
    a = cache_path(tmp_path, GGUFWeights(tmp_path / "a", "ab" * 32))
    b = cache_path(tmp_path, GGUFWeights(tmp_path / "a", "cd" * 32))
    assert a != b
