"""The llama.cpp backend: the GGUF run in-process by llama.cpp (llama-cpp-python), no torch.

    backend = LlamaCppBackend(LlamaCppModelConfig())          # the bundled Gemma 3 270M
    gen = backend.generate(GenerateRequest(system=..., demos=..., input="A pan smokes.",
                                           hidden_layers=(backend.hidden.layers,)))
    gen.hidden      # the final-norm state at the last prompt token, for the safety head

What the edge needs from an engine, on the engine every small-device runtime uses:

- **Prefix reuse, the same bits every time.** One KV sequence. The skill's prefix (its
  instructions and demonstrations, and the ``Scene:`` label: the same for every input) is
  always evaluated alone, and the input after it as one batch; before each request the
  cache is cut back to the prefix if it holds it, else cleared. llama.cpp's numbers
  depend slightly on how tokens are batched, and a safety head can turn that into a
  p(unsafe) 0.09 apart (seen: an edge refused a release because one canary scored 0.64
  there and 0.55 on the teacher), so an input never rides in a batch with another
  input's leftovers. The SWA layers keep
  their full cache (``swa_full``), so cutting back to the prefix is exact.
- **The head's features from the answering pass.** A head that reads an earlier layer
  ``i`` (1 .. n_layer - 1: the output of block ``i - 1``, llama.cpp's ``l_out-{i-1}``)
  gets it through llama.cpp's eval callback (``cb_eval``), which copies the batch's last
  row of that tensor out; the same callback copies the final-norm state (``result_norm``,
  hidden-state index ``n_layer`` in the embedded backend's numbering), which llama.cpp
  computes for the output token only. So the rest of the prompt is one batch with logits
  for its last token, as when no head reads anything. The callback costs every later
  decode step about 6 % (measured: llama.cpp asks it about each of ~750 graph nodes per
  token), so the context carries it only while a head reads an earlier layer: the first
  request that asks for one rebuilds the context with it (the cached prefix is recomputed
  once). A head of the final state alone runs without it: the prompt but its last token is
  evaluated with no outputs, then the last token alone with embeddings on (with embeddings
  on llama.cpp outputs every token of a batch, and Gemma's 262k-token vocabulary makes
  that 1 MiB of logits per token); embeddings go off again for decoding.
- **A prompt asked again right after** (``answer: when_needed``: the sentence after the
  prefill that judged the input) starts decoding from the cache and the logits its last
  token left, so the two calls compute what one answering pass does, at its cost.
- **LoRA hot-swap.** A release's PEFT adapter is converted to a GGUF adapter once
  (``shared.gguf_adapter``: numpy, no torch) into ``adapter_cache``, loaded with
  ``llama_adapter_lora_init`` and switched on the live context with
  ``llama_set_adapters_lora``: the base weights are never reloaded; the cached prefix is
  dropped on a switch and recomputed under the new adapter.
- **Greedy decoding with log-probabilities** (top 5 at each step from the full
  softmax, ``shared.llamacpp_vocab``), stop sequences cut from the text, the token budget;
  the text starts with ``Answer:`` as on every backend.

Thread safety: one lock around the context; calls are serialised.
It knows nothing about skills' storage, heads or policy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.backend import (
    GenerateRequest,
    Generation,
    HiddenSpec,
    TokenLogprob,
    first_stop,
)
from shared.config import LlamaCppModelConfig
from shared.errors import BackendError, ModelError
from shared.gguf_adapter import cached_gguf_adapter
from shared.llamacpp_kv import KVSequence
from shared.llamacpp_lora import LoraSlots
from shared.llamacpp_native import LayerTaps, context_with, route_logs
from shared.llamacpp_vocab import Vocab
from shared.skill import ANSWER_PRIMER, INPUT_LABEL, render_input, render_prefix

logger = logging.getLogger(__name__)

ENGINE = "llamacpp"


class LlamaCppBackend:
    """Greedy generation on llama.cpp with prefix reuse, head features and LoRA switching."""

    supports_adapters = True

    def __init__(self, config: LlamaCppModelConfig | None = None):
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python, a dependency of gemma-edge "
                "(pip install -e . compiles it: about 6 minutes on 2 cores)"
            ) from exc
        from shared.models import gguf_weights

        route_logs(llama_cpp)
        self.config = config or LlamaCppModelConfig()
        self._ll = llama_cpp
        weights = gguf_weights(self.config.gguf_path)
        self.weights = weights
        threads = self.config.threads or max(1, min(4, os.cpu_count() or 1))
        t0 = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(weights.path),
                n_ctx=self.config.n_ctx,
                n_batch=self.config.n_batch,
                n_ubatch=self.config.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                embedding=False,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                swa_full=True,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp could not load {weights.path}: {exc}") from exc
        self.name = f"llamacpp:{weights.path.stem}"
        self.lock = threading.RLock()
        self._model = self._llm.model
        self._text = Vocab(llama_cpp, self._llm)  # tokens, pieces, the greedy read-out
        self._n_ctx = self._llm.n_ctx()
        self._kv = KVSequence(  # sequence 0 and the tokens it holds
            llama_cpp, self._llm.ctx, self.config.n_batch, self.config.prefix_cache, self.name
        )
        n_layer = int(llama_cpp.llama_model_n_layer(self._model))
        self._layers = LayerTaps(llama_cpp, int(self._llm.n_embd()))
        self.hidden = HiddenSpec(
            engine=ENGINE,
            num_layers=n_layer,
            size=int(self._llm.n_embd()),
            readable=tuple(range(1, n_layer + 1)) if self._layers.available else (n_layer,),
        )
        self._own_ctx = False  # True once the context is ours (rebuilt with or without taps)
        self._tapped = False  # the context carries the eval callback
        self._ready: tuple | None = None  # (ids, layers, hidden, kv version): logits that stand
        self._loras = LoraSlots(llama_cpp, self._model)  # a release's adapters, loaded once
        self._prefix_ids: dict[str, list[list[int]]] = {}
        self.loads = 1  # base model loads, whatever adapters come and go
        self._vision = self._open_vision(threads)
        self.accepts_images = self._vision is not None  # the edge sends frames as JPEG
        logger.info("llama.cpp loaded %s in %.2f s", weights.path.name, time.perf_counter() - t0)

    # ------------------------------------------------------------ generation
    def generate(self, request: GenerateRequest) -> Generation:
        with self.lock:
            if self._llm is None:
                raise BackendError(f"{self.name}: the backend is closed")
            return self._generate(request)

    def generate_batch(self, requests: list[GenerateRequest]) -> list[Generation]:
        with self.lock:
            return [self.generate(r) for r in requests]

    def close(self) -> None:
        with self.lock:
            if self._llm is None:
                return
            if self._vision is not None:
                self._vision.close()
            self._kv.close()
            if self._own_ctx:
                self._ll.llama_free(self._kv.ctx)
            self._loras.close()
            self._llm.close()
            self._llm = None

    def _generate(self, request: GenerateRequest) -> Generation:
        wanted = tuple(request.hidden_layers)
        unreadable = [i for i in wanted if i not in self.hidden.readable]
        if unreadable:
            raise ModelError(
                f"{self.name} gives hidden layers {list(self.hidden.readable)}; "
                f"{unreadable} were asked"
            )
        if wanted:
            self._tap(tuple(i for i in wanted if i < self.hidden.num_layers))
        t0 = time.perf_counter()
        boundary = None  # a frame's prompt: reuse the longest prefix the cache shares
        if self._vision is not None and request.image is not None:
            ids = self._vision.prompt(request)  # a frame's positions are keys < 0: see below
        else:
            prefix = render_prefix(request.system, request.demos)
            ids = self._tokenize(prefix + render_input(request.input))
            boundary = self._boundary(prefix, ids)
        budget = request.max_new_tokens
        if len(ids) + budget > self._n_ctx:
            raise BackendError(
                f"{self.name}: the prompt is {len(ids)} tokens and {budget} more were asked; "
                f"the context holds {self._n_ctx} (model.llamacpp.n_ctx)"
            )
        ready, self._ready = self._ready, None
        if (
            self.config.prefix_cache
            and ready is not None
            and ready[:2] == (ids, wanted)
            and ready[3] == self._kv.version
        ):
            # the same prompt again (when_needed: its sentence after its prefill): the cache
            # holds it and its last token's logits stand, as in one answering pass
            kept, hidden = len(ids), None if ready[2] is None else list(ready[2])
        else:
            kept, hidden = self._prompt(ids, boundary, wanted)
        self._ready = (ids, wanted, hidden, self._kv.version)
        ttft = time.perf_counter() - t0
        tokens: list[int] = []
        logprobs: list[TokenLogprob] = []
        text = ""
        cut: int | None = None
        offsets: list[int] = []
        if budget > 0:
            while True:
                token, lp = self._text.pick(self._kv.ctx)
                if self._text.is_end(token):
                    break
                tokens.append(token)
                offsets.append(len(text))
                logprobs.append(lp)
                text = self._text.detokenize(tokens)
                cut = first_stop(text, request.stop)
                if cut is not None or len(tokens) >= budget:
                    break
                try:
                    self._eval([token], output_last=True)
                except BackendError:
                    self._kv.forget()
                    raise
        if cut is not None:
            logprobs = [lp for lp, o in zip(logprobs, offsets, strict=True) if o < cut]
            text = text[:cut]
        return Generation(
            text=ANSWER_PRIMER + text,
            tokens=len(tokens),
            prompt_tokens=len(ids) - kept,
            ttft_s=ttft,
            total_s=time.perf_counter() - t0,
            logprobs=logprobs if budget > 0 else None,
            backend=self.name,
            hidden=hidden,
        )

    def _prompt(
        self, ids: list[int], boundary: int | None, wanted: tuple[int, ...]
    ) -> tuple[int, list[float] | None]:
        """Evaluate the prompt ``ids`` after what the cache keeps of it, with logits for its
        last token: the tokens kept, and the hidden state of the ``wanted`` layers."""
        common = kept = self._kv.keep_prefix(ids, boundary)
        try:
            if boundary and common < boundary:  # the shared prefix alone: the same bits
                self._eval(ids[common:boundary], output_last=False)
                common = boundary
            if wanted and self._tapped and self._vision is None:
                hidden = self._eval_tapped(ids[common:], wanted)  # one pass (module doc)
            elif wanted:  # the last token alone, with embeddings on (see the module doc)
                self._eval(ids[common:-1], output_last=False)
                hidden = self._eval_last(ids[-1], wanted)
            else:
                self._eval(ids[common:], output_last=True)
                hidden = None
        except BackendError:
            self._kv.forget()
            raise
        return kept, hidden

    # ------------------------------------------------------------ the context
    def _boundary(self, prefix: str, ids: list[int]) -> int:
        """How many of ``ids`` every input of this skill shares: the skill prefix and the
        input label after it (``Scene:``), else the prefix alone, where that tokenisation is
        a token-prefix of the whole prompt's (0 where neither is: then nothing is reused)."""
        owns = self._prefix_ids.get(prefix)
        if owns is None:
            owns = [self._tokenize(prefix + INPUT_LABEL), self._tokenize(prefix)]
            self._prefix_ids = {prefix: owns}  # one skill at a time
        for own in owns:
            n = len(own)
            if n < len(ids) and ids[:n] == own:
                return n
        return 0

    def _eval(self, tokens: list[int], output_last: bool) -> None:
        """Append ``tokens`` to sequence 0 in batches; logits for the last one if asked."""
        if self._vision is not None and tokens and min(tokens) < 0:
            return self._vision.eval(tokens, output_last)  # a frame inside: see below
        self._kv.eval(tokens, output_last)

    def _eval_last(self, token: int, layers: tuple[int, ...]) -> list[float]:
        """The last prompt token alone with embeddings on: its final-norm state and the
        earlier ``layers`` the eval callback copies out, concatenated in order."""
        final = self.hidden.num_layers

        def decode() -> dict[int, np.ndarray]:
            ctx = self._kv.ctx
            self._ll.llama_set_embeddings(ctx, True)
            try:
                self._kv.decode([token], True)
                ptr = self._ll.llama_get_embeddings_ith(ctx, -1)
                if not ptr:
                    raise BackendError(f"{self.name}: llama.cpp returned no hidden state")
                return {final: np.ctypeslib.as_array(ptr, shape=(self.hidden.size,)).copy()}
            finally:
                self._ll.llama_set_embeddings(ctx, False)

        return self._layers.read(layers, final, decode, self.name, tap_final=False)

    def _eval_tapped(self, tokens: list[int], layers: tuple[int, ...]) -> list[float]:
        """The rest of the prompt in one pass on a tapped context, logits for its last token
        only: the eval callback copies the last token's row of the earlier ``layers`` and of
        the final-norm state (``result_norm``), so no embeddings pass is needed."""
        tail = tokens[-self.config.n_batch :]  # the last batch carries the output token
        head = tokens[: len(tokens) - len(tail)]
        if head:
            self._eval(head, output_last=False)
        return self._layers.read(
            layers, self.hidden.num_layers, lambda: self._kv.decode(tail, True), self.name
        )

    # ------------------------------------------------------------ earlier layers
    def _tap(self, earlier: tuple[int, ...]) -> None:
        """Give the context the eval callback if ``earlier`` layers are asked, or take it
        away if a head reads the final state alone (a rebuilt context, see the module doc)."""
        need = bool(earlier)
        if need == self._tapped:
            return
        t0 = time.perf_counter()
        callback = self._layers.callback if need else None
        ctx = context_with(self._ll, self._llm, callback, f"{self.name} (layers {list(earlier)})")
        if self._own_ctx:
            self._ll.llama_free(self._kv.ctx)
        else:
            self._llm._ctx.close()  # the Llama object's own context: ours replaces it
        self._kv.rebind(ctx)
        self._own_ctx, self._tapped = True, need
        self._apply()  # the active adapter on the new context; nothing is cached in it
        logger.info(
            "llama.cpp context rebuilt %s the eval callback (hidden layers %s) in %.3f s",
            "with" if need else "without",
            list(earlier),
            time.perf_counter() - t0,
        )

    # ------------------------------------------------------------ tokens (shared.llamacpp_vocab)
    def _tokenize(self, text: str) -> list[int]:
        return self._text.tokenize(text)

    # ------------------------------------------------------------ adapters (LoraSlots)
    @property
    def active_adapter(self) -> str | None:
        return self._loras.active

    @property
    def adapters(self) -> list[str]:
        return self._loras.names

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        """Load a release's adapter (a PEFT folder, converted once to a GGUF adapter, or a
        ``.gguf`` file) under ``name``; not activated. A failure keeps what was loaded."""
        gguf = cached_gguf_adapter(Path(path), Path(self.config.adapter_cache).expanduser())
        with self.lock:
            try:
                self._loras.load(name, gguf, self._kv.ctx)
            finally:
                if self._loras.active == name:
                    self._kv.forget()

    def set_adapter(self, name: str | None) -> None:
        with self.lock:
            if self._loras.select(name):
                self._apply()

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if self._loras.unload(name, self._kv.ctx):
                self._kv.forget()

    def _apply(self) -> None:
        """Put the active adapter on the context; the cached keys and values are stale."""
        try:
            self._loras.apply(self._kv.ctx)
        finally:
            self._kv.forget()

    # ------------------------------------------------------------ frames (model.llamacpp.mmproj)
    # The hook for a multimodal GGUF: shared.llamacpp_vision puts a request's JPEG in the
    # prompt through llama.cpp's mtmd, as keys < 0 in ``ids`` and ``_kv`` (one per image
    # position, so prefix reuse compares them like tokens); ``_eval`` hands a run holding
    # them to it, and it evaluates the text around them here. Without mmproj a request's
    # image is ignored: a text-only model reads the scene sketch.
    def _open_vision(self, threads: int) -> Any:
        if self.config.mmproj is None:
            return None
        from shared.llamacpp_vision import Vision

        try:
            return Vision(self, self.config.mmproj, threads)
        except ModelError:
            self._vision = None
            self.close()
            raise
