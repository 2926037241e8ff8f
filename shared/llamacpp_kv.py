"""Sequence 0 of a llama.cpp context: the positions whose keys and values it holds.

    kv = KVSequence(llama_cpp, ctx, n_batch=512, reuse=True)
    kept = kv.keep_prefix(ids, boundary)    # cut back to what ids share, never past boundary
    kv.eval(ids[kept:], output_last=True)   # appended in batches, logits for the last token
    kv.forget()                             # cleared: an adapter switch, a failed decode

Why the cut never goes past ``boundary`` (what every input of a skill shares): an input's
numbers must not depend on what came before it in the process (``shared.llamacpp_backend``).
The backend swaps ``ctx`` when it rebuilds its context (``kv.rebind(ctx)``: nothing is
cached in the new one). ``version`` changes with every decode and clear, so a caller can
tell whether the last logits still stand. A position may be a key < 0 (an image's, added
with ``extend`` after ``shared.llamacpp_vision`` evaluated it), compared like a token.

It knows nothing about prompts, skills, adapters or heads.
"""

from __future__ import annotations

from typing import Any

from shared.errors import BackendError


class KVSequence:
    """The tokens in sequence 0 of ``ctx``, kept in step with llama.cpp's memory."""

    def __init__(self, ll: Any, ctx: Any, n_batch: int, reuse: bool = True, name: str = ""):
        self._ll, self.ctx, self.n_batch, self.reuse = ll, ctx, n_batch, reuse
        self.name = name or "llama.cpp"
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self.tokens: list[int] = []
        self.version = 0

    def keep_prefix(self, ids: list[int], boundary: int | None = None) -> int:
        """Cut the sequence back to the longest prefix it shares with ``ids``, never past
        ``boundary`` (0: nothing is shared, so nothing is kept; None: no limit) and at most
        all but the last token; a partial ``boundary`` is built anew. The tokens kept."""
        common = 0
        if self.reuse:
            for a, b in zip(self.tokens, ids, strict=False):
                if a != b:
                    break
                common += 1
        common = min(common, len(ids) - 1, len(ids) if boundary is None else boundary)
        if boundary and common < boundary:  # a partial prefix was built another way: anew
            common = 0
        memory = self._ll.llama_get_memory(self.ctx)
        if common == 0:
            self._ll.llama_memory_clear(memory, True)
        elif common < len(self.tokens):
            if not self._ll.llama_memory_seq_rm(memory, 0, common, -1):
                self._ll.llama_memory_clear(memory, True)
                common = 0
        if common < len(self.tokens):
            self.version += 1
        self.tokens = self.tokens[:common]
        return common

    def forget(self) -> None:
        """Nothing cached: the memory cleared."""
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)
        self.tokens = []
        self.version += 1

    def rebind(self, ctx: Any) -> None:
        """A rebuilt context in place of the old one (the caller frees that): nothing cached."""
        self.ctx, self.tokens = ctx, []
        self.version += 1

    def eval(self, tokens: list[int], output_last: bool) -> None:
        """Append text ``tokens`` in batches of ``n_batch``; logits for the last if asked."""
        step = self.n_batch
        for start in range(0, len(tokens), step):
            last = output_last and start + step >= len(tokens)
            self.decode(tokens[start : start + step], last)

    def decode(self, tokens: list[int], output_last: bool) -> None:
        """One ``llama_decode`` of ``tokens`` (at most ``n_batch``) after the sequence."""
        batch, pos = self._batch, len(self.tokens)
        self.version += 1
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = output_last and i == len(tokens) - 1
        rc = self._ll.llama_decode(self.ctx, batch)
        if rc != 0:
            raise BackendError(f"{self.name}: llama_decode returned {rc}")
        self.tokens.extend(tokens)

    def extend(self, keys: list[int]) -> None:
        """Positions something else evaluated into sequence 0 (an image's keys)."""
        self.version += 1
        self.tokens.extend(keys)

    def close(self) -> None:
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
