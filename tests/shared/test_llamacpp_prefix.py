"""Which tokens every input of a skill shares on llama.cpp (``LlamaCppBackend._boundary``),
and how sequence 0 is cut back to them (``shared.llamacpp_kv.KVSequence``).

The real engine's reuse is tested in test_llamacpp_backend.py; this checks the fallbacks
with a toy tokenizer, so it runs without a model."""

from __future__ import annotations

from shared.llamacpp_backend import LlamaCppBackend
from shared.llamacpp_kv import KVSequence
from shared.skill import render_input


def toy(merges: tuple[str, ...] = ()):
    """Characters as tokens, except the pairs in ``merges``, which become one token."""

    def tokenize(text: str) -> list[str]:
        out, i = [], 0
        while i < len(text):
            pair = text[i : i + 2]
            step = 2 if pair in merges else 1
            out.append(text[i : i + step])
            i += step
        return out

    return tokenize


def boundary(prefix: str, text: str, merges: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    backend = object.__new__(LlamaCppBackend)  # only the tokenizer is needed
    backend._prefix_ids, backend._tokenize = {}, toy(merges)
    ids = backend._tokenize(prefix + render_input(text))
    return backend._boundary(prefix, ids), ids


def test_the_prefix_and_the_input_label_are_shared_by_every_input():
    prefix = "Be careful.\n"
    n, ids = boundary(prefix, "A pan smokes.")
    assert "".join(ids[:n]) == prefix + "Scene:"
    assert boundary(prefix, "A cat sleeps.")[0] == n  # the same for the next input


def test_a_label_that_tokenises_into_the_input_falls_back_to_the_prefix_alone():
    prefix = "Be careful.\n"
    n, ids = boundary(prefix, "A pan smokes.", merges=(": ",))  # ":" joins the space after it
    assert "".join(ids[:n]) == prefix


def test_a_prefix_that_tokenises_into_the_input_shares_nothing():
    # the prefix's last character joins the label's first, and the label joins the input
    n, _ = boundary("Be careful.\n", "A pan smokes.", merges=("\nS", ": "))
    assert n == 0  # then nothing is reused: every input is evaluated whole


class _Memory:
    """Stands in for llama.cpp's memory calls: records what the cache is cut back to."""

    def __init__(self):
        self.calls: list[tuple] = []

    def llama_batch_init(self, n_batch, embd, n_seq):
        return None

    def llama_get_memory(self, ctx):
        return "memory"

    def llama_memory_clear(self, memory, data):
        self.calls.append(("clear",))

    def llama_memory_seq_rm(self, memory, seq, start, end):
        self.calls.append(("cut", start))
        return True


def keep(cached: list[int], ids: list[int], shared: int | None) -> tuple[int, list[tuple]]:
    ll = _Memory()
    kv = KVSequence(ll, None, 512)
    kv.tokens = list(cached)
    kept = kv.keep_prefix(ids, shared)
    assert kv.tokens == cached[:kept]
    return kept, ll.calls


def test_the_cache_is_cut_back_to_the_shared_prefix_and_to_nothing_when_none_is_known():
    before, now = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9]  # four tokens in common
    assert keep(before, now, 3) == (3, [("cut", 3)])  # never past what every input shares
    assert keep(before, now, 0) == (0, [("clear",)])  # nothing shared: nothing reused
    assert keep(before, now, None) == (4, [("cut", 4)])  # a frame: all the cache shares
    assert keep([1, 2], now, 3) == (0, [("clear",)])  # a partial prefix is built anew


def test_a_cut_or_a_clear_tells_a_caller_the_last_logits_no_longer_stand():
    kv = KVSequence(_Memory(), None, 512)
    kv.tokens = [1, 2, 3, 4]
    before = kv.version
    assert kv.keep_prefix([1, 2, 3, 4, 5], 4) == 4 and kv.version == before  # all kept
    kv.keep_prefix([1, 2, 7, 8], None)
    cut = kv.version
    assert cut != before
    kv.forget()
    assert kv.version != cut and kv.tokens == []
