"""The embedded backend: Gemma in-process with transformers + PyTorch, fast on a small CPU.

    backend = EmbeddedBackend(EmbeddedModelConfig())
    gen = backend.generate(GenerateRequest(system=skill.instructions, demos=skill.demos,
                                           input="A man is cooking pasta."))
    parse_answer(gen.text, verdict_confidence(gen.logprobs))

The base model sees a plain few-shot document (``shared.skill``): the skill's
instructions and demonstrations form a *prefix* that is the same for every input, so
its KV cache is computed once per (adapter, prefix) and reused; each request then runs
only its own ~25 input tokens before decoding. (Where the prefix's own tokenisation is
not a token-prefix of the full prompt's, the common part of the cache is used.)

Decoding is greedy (``shared.decoding.GreedyDecoder``: an int8 LM head with exact
rescoring, a lean single-token step, prompt-lookup drafting; each keeps the plain
model's greedy tokens and each can be switched off in ``EmbeddedModelConfig``;
bench/student.py measures each). It stops at EOS, at a stop sequence (cut from the
text) or at the token budget; the returned text starts with ``Answer:`` followed by the
continuation, so ``shared.answer.parse_answer`` works on it as on every backend's.

LoRA adapters are injected with PEFT into the one loaded model and switched by name;
the base weights are never reloaded. Because an adapter changes the keys and values,
prefix caches are kept per adapter.

Thread safety: one ``threading.RLock`` guards the model, the prefix caches and the
adapter state. ``generate``, ``generate_batch`` and every adapter call take it, so
calls from several threads are serialised (a generation never sees an adapter switch
half-way). A caller that injects a shared model must route every use of that model
through this backend (or hold ``backend.lock``) while it is in use.

This module knows nothing about skills' storage, answers' meaning or escalation, nor
how a token is chosen fast (``shared.decoding``).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from shared.backend import GenerateRequest, Generation, TokenLogprob, first_stop
from shared.config import EmbeddedModelConfig
from shared.decoding import GreedyDecoder
from shared.errors import BackendError, ModelError
from shared.skill import ANSWER_PRIMER, render_input, render_prefix

logger = logging.getLogger(__name__)

PREFIX_CACHE_ENTRIES = 8


class EmbeddedBackend:
    """Greedy generation with a per-skill prefix KV cache and switchable LoRA adapters."""

    supports_adapters = True

    def __init__(
        self,
        config: EmbeddedModelConfig | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ):
        import torch

        self.config = config or EmbeddedModelConfig()
        if (model is None) != (tokenizer is None):
            raise ModelError("EmbeddedBackend needs both model and tokenizer, or neither")
        if model is None:
            from shared.models import load_from_config

            model, tokenizer = load_from_config(self.config)
        elif self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.model = model
        self.tokenizer = tokenizer
        self.lock = threading.RLock()
        weights = self.config.gguf_path.stem if self.config.gguf_path else "gemma-3-270m"
        self.name = f"embedded:{weights}"
        self._prefixes: OrderedDict[tuple[str | None, str], tuple[list[int], Any]] = OrderedDict()
        self._peft: Any = None
        self._adapters: dict[str, tuple[str, Path]] = {}  # name -> (PEFT name, folder)
        self._loads = 0
        self._active: str | None = None
        self._eos = self._eos_ids()
        self.model.eval()
        self._decoder = GreedyDecoder(
            self.model,
            self.tokenizer,
            int8_head=self.config.int8_head,
            speculative=self.config.speculative,
        )

    # ------------------------------------------------------------ generation
    def generate(self, request: GenerateRequest) -> Generation:
        with self.lock:
            try:
                return self._generate(request)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise BackendError(f"{self.name}: generation failed: {exc}") from exc

    def generate_batch(self, requests: list[GenerateRequest]) -> list[Generation]:
        """One after another under the lock (requests sharing a prefix share its cache)."""
        with self.lock:
            return [self.generate(r) for r in requests]

    def close(self) -> None:
        """Drop the prefix caches and the int8 head (the model stays with its owner)."""
        self.wait_ready()
        with self.lock:
            self._prefixes.clear()
            self._decoder.close()

    def _generate(self, request: GenerateRequest) -> Generation:
        import torch

        t0 = time.perf_counter()
        prefix = render_prefix(request.system, request.demos)
        ids = self.tokenizer(prefix + render_input(request.input)).input_ids
        out = _Output(self.tokenizer, request, self._eos)
        with torch.inference_mode():
            cache, cached = self._start_cache(prefix, ids)
            decode = request.max_new_tokens > 0
            picked, hidden = self._decoder.prefill(
                ids[cached:], cache, request.hidden_layers, pick=decode
            )
            ttft = time.perf_counter() - t0
            if decode:
                self._decoder.decode(ids, cache, picked, out, request.max_new_tokens)
        text, logprobs = out.result()
        total = time.perf_counter() - t0
        return Generation(
            text=ANSWER_PRIMER + text,
            tokens=len(out.tokens),
            prompt_tokens=len(ids) - cached,
            ttft_s=ttft,
            total_s=total,
            logprobs=logprobs,
            backend=self.name,
            hidden=hidden,
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until background preparation (the int8 head) is done; True if it is."""
        return self._decoder.wait_ready(timeout)

    # ------------------------------------------------------------ prefix cache
    def _start_cache(self, prefix: str, ids: list[int]) -> tuple[Any, int]:
        """A KV cache holding the longest cached token-prefix of ``ids``, and its length."""
        from transformers import DynamicCache

        if not self.config.prefix_cache:
            return DynamicCache(config=self.model.config), 0
        key = self._cache_key(prefix)
        entry = self._prefixes.get(key)
        if entry is None:
            entry = self._build_prefix(prefix)
            self._prefixes[key] = entry
            while len(self._prefixes) > PREFIX_CACHE_ENTRIES:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        prefix_ids, prefix_cache = entry
        # The prefix's own tokenisation must be a token-prefix of the full prompt's; where
        # it is not (a merge across the boundary), use the common part and run the rest.
        common = 0
        for a, b in zip(prefix_ids, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        if common == 0:
            return DynamicCache(config=self.model.config), 0
        cache = copy.deepcopy(prefix_cache)
        if common < len(prefix_ids):
            logger.debug("prefix tokenisation differs at token %s; cropping the cache", common)
            cache.crop(common - len(prefix_ids))
        return cache, common

    def _build_prefix(self, prefix: str) -> tuple[list[int], Any]:
        import torch
        from transformers import DynamicCache

        t0 = time.perf_counter()
        prefix_ids = self.tokenizer(prefix).input_ids
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self._decoder.forward(torch.tensor([prefix_ids], device=self.model.device), cache)
        logger.info(
            "cached a %s-token prefix (adapter %s) in %.2f s",
            len(prefix_ids),
            self._active,
            time.perf_counter() - t0,
        )
        return prefix_ids, cache

    # ------------------------------------------------------------ adapters
    @property
    def active_adapter(self) -> str | None:
        return self._active

    @property
    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        """Load a PEFT LoRA adapter directory under ``name``; it is not activated.
        (``system``, the prompt it was trained under, is for backends that bake it in.)

        Loading again under a loaded name replaces that adapter (and, if it is the
        active one, the new weights become active); if the new one fails to load, the
        old one stays as it was.
        """
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name!r}: {path} holds no adapter_config.json")
        with self.lock:
            from peft import PeftModel
            from safetensors import SafetensorError

            t0 = time.perf_counter()
            self._loads += 1
            internal = f"a{self._loads}"  # PEFT's name; unique, so a replacement can fail safely
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self.model, str(path), adapter_name=internal, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(str(path), adapter_name=internal, is_trainable=False)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
                self._apply_active()
                raise ModelError(f"adapter {name!r}: loading {path} failed: {exc}") from exc
            if name in self._adapters:
                self._delete(name)
            self._adapters[name] = (internal, path)
            self._apply_active()  # PEFT activates what it loads; restore the chosen one
            logger.info("loaded adapter %s from %s in %.2f s", name, path, time.perf_counter() - t0)

    def set_adapter(self, name: str | None) -> None:
        """Activate a loaded adapter by name; None runs the base model. Takes milliseconds."""
        with self.lock:
            if name is not None and name not in self._adapters:
                raise ModelError(f"adapter {name!r} is not loaded (loaded: {self.adapters})")
            self._active = name
            self._apply_active()

    def unload_adapter(self, name: str) -> None:
        """Remove an adapter's weights; if it was active, the base model becomes active."""
        with self.lock:
            if name not in self._adapters:
                raise ModelError(f"adapter {name!r} is not loaded (loaded: {self.adapters})")
            self._delete(name)
            if self._active == name:
                self._active = None
            self._apply_active()

    def _delete(self, name: str) -> None:
        internal, _ = self._adapters.pop(name)
        self._peft.base_model.disable_adapter_layers()
        self._peft.delete_adapter(internal)
        for key in [k for k in self._prefixes if k[0] == internal]:
            del self._prefixes[key]

    def _apply_active(self) -> None:
        if self._peft is None:
            return
        if self._active is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.set_adapter(self._adapters[self._active][0])
            self._peft.base_model.enable_adapter_layers()

    def _cache_key(self, prefix: str) -> tuple[str | None, str]:
        internal = self._adapters[self._active][0] if self._active is not None else None
        return internal, prefix

    # ------------------------------------------------------------ tokens
    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        return ids


class _Output:
    """The tokens generated so far, their text and log-probabilities, and when to stop."""

    def __init__(self, tokenizer: Any, request: GenerateRequest, eos: set[int]):
        self.tokenizer = tokenizer
        self.request = request
        self.eos = eos
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.offsets: list[int] = []
        self.text = ""
        self.cut: int | None = None

    def add(self, token: int, logprob: TokenLogprob) -> bool:
        """Append one token; True when generation must end (EOS, stop sequence, budget)."""
        if token in self.eos:
            return True
        self.tokens.append(token)
        self.offsets.append(len(self.text))
        self.logprobs.append(logprob)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.cut = first_stop(self.text, self.request.stop)
        return self.cut is not None or len(self.tokens) >= self.request.max_new_tokens

    def result(self) -> tuple[str, list[TokenLogprob]]:
        """The text up to the first stop sequence and the log-probabilities of its tokens."""
        if self.cut is None:
            return self.text, self.logprobs
        kept = [lp for lp, o in zip(self.logprobs, self.offsets, strict=True) if o < self.cut]
        return self.text[: self.cut], kept
