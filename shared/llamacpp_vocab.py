"""The llama.cpp backend's vocabulary: text to tokens and back, and the greedy read-out.

    vocab = Vocab(llama_cpp, llm)
    token, logprob = vocab.pick(ctx)     # after a decode that asked for the last logits
    if vocab.is_end(token): ...

``pick`` reads the last logits of a context: the greedy token and the top ``TOP_LOGPROBS``
with their log-probabilities from the full softmax (a preallocated buffer, no per-step
allocation of Gemma's 262k-entry vocabulary). Pieces (one token's text) are cached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shared.backend import TOP_LOGPROBS, TokenLogprob


class Vocab:
    """Tokenize, detokenize and the greedy token with its top log-probabilities."""

    def __init__(self, llama_cpp: Any, llm: Any):
        self._ll = llama_cpp
        self._llm = llm
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.size = llm.n_vocab()
        self._pieces: dict[int, str] = {}
        self._exp = np.empty(self.size, dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._llm.detokenize([token]).decode("utf-8", errors="replace")
            self._pieces[token] = piece
        return piece

    def is_end(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    def pick(self, ctx: Any) -> tuple[int, TokenLogprob]:
        """The greedy token and the top 5 with their log-probabilities (full softmax)."""
        ptr = self._ll.llama_get_logits_ith(ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.size,))
        peak = float(logits.max())
        near = np.flatnonzero(logits > peak - 8.0)  # the top 5 are almost always here
        if near.size < TOP_LOGPROBS:
            near = np.argpartition(logits, -TOP_LOGPROBS)[-TOP_LOGPROBS:]
        top = near[np.argsort(-logits[near], kind="stable")[:TOP_LOGPROBS]]
        np.subtract(logits, peak, out=self._exp)
        np.exp(self._exp, out=self._exp)
        logz = peak + math.log(float(self._exp.sum(dtype=np.float64)))
        alts = {self.piece(int(i)): float(logits[i]) - logz for i in top}
        token = int(top[0])
        return token, TokenLogprob(self.piece(token), float(logits[token]) - logz, alts)
