"""The embedded backend: Gemma in-process with transformers + PyTorch, fast on a small CPU.

    backend = EmbeddedBackend(EmbeddedModelConfig())
    gen = backend.generate(GenerateRequest(system=skill.instructions, demos=skill.demos,
                                           input="A man is cooking pasta."))
    parse_answer(gen.text, verdict_confidence(gen.logprobs))

The base model sees a plain few-shot document (``shared.skill``): the skill's
instructions and demonstrations form a *prefix* that is the same for every input, so
its KV cache is computed once per (adapter, prefix) and reused; each request then runs
only its own ~25 input tokens before decoding. Decoding is a hand-written greedy loop
(one forward per token, the LM head only at the last position, one log-softmax per
step for the chosen token's log-probability and the top-5 alternatives) that stops at
EOS, at a stop sequence (which is cut from the text) or at the token budget. The
returned text starts with ``Answer:`` followed by the continuation, so
``shared.answer.parse_answer`` works on it as on every other backend's text.

LoRA adapters are injected with PEFT into the one loaded model and switched by name;
the base weights are never reloaded. Because an adapter changes the keys and values,
prefix caches are kept per adapter.

Thread safety: one ``threading.RLock`` guards the model, the prefix caches and the
adapter state. ``generate``, ``generate_batch`` and every adapter call take it, so
calls from several threads are serialised (a generation never sees an adapter switch
half-way). A caller that injects a shared model must route every use of that model
through this backend (or hold ``backend.lock``) while it is in use.

This module knows nothing about skills' storage, answers' meaning or escalation.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from shared.backend import GenerateRequest, Generation, TokenLogprob
from shared.config import EmbeddedModelConfig
from shared.errors import BackendError, ModelError
from shared.skill import ANSWER_PRIMER, render_input, render_prefix

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 5
PREFIX_CACHE_ENTRIES = 8


class EmbeddedBackend:
    """Greedy generation with a per-skill prefix KV cache and switchable LoRA adapters."""

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
        self._adapters: dict[str, Path] = {}
        self._active: str | None = None
        self._eos = self._eos_ids()
        self._token_text: dict[int, str] = {}
        self.model.eval()

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
        with self.lock:
            self._prefixes.clear()

    def _generate(self, request: GenerateRequest) -> Generation:
        import torch

        t0 = time.perf_counter()
        prefix = render_prefix(request.system, request.demos)
        ids = self.tokenizer(prefix + render_input(request.input)).input_ids
        device = self.model.device
        with torch.inference_mode():
            cache, cached = self._start_cache(prefix, ids)
            new = torch.tensor([ids[cached:]], device=device)
            out = self.model(input_ids=new, past_key_values=cache, use_cache=True, logits_to_keep=1)
            generated: list[int] = []
            logprobs: list[TokenLogprob] = []
            offsets: list[int] = []
            text, cut, ttft = "", None, 0.0
            for step in range(request.max_new_tokens):
                logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                top = torch.topk(logp, TOP_LOGPROBS)
                token = int(top.indices[0])
                if step == 0:
                    ttft = time.perf_counter() - t0
                if token in self._eos:
                    break
                generated.append(token)
                offsets.append(len(text))
                logprobs.append(
                    TokenLogprob(
                        token=self._text_of(token),
                        logprob=float(top.values[0]),
                        top={
                            self._text_of(int(i)): float(v)
                            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
                        },
                    )
                )
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                cut = _first_stop(text, request.stop)
                if cut is not None or step + 1 == request.max_new_tokens:
                    break
                out = self.model(
                    input_ids=torch.tensor([[token]], device=device),
                    past_key_values=cache,
                    use_cache=True,
                )
        if cut is not None:
            text = text[:cut]
            logprobs = [lp for lp, off in zip(logprobs, offsets, strict=True) if off < cut]
        total = time.perf_counter() - t0
        return Generation(
            text=ANSWER_PRIMER + text,
            tokens=len(generated),
            prompt_tokens=len(ids) - cached,
            ttft_s=ttft,
            total_s=total,
            logprobs=logprobs,
            backend=self.name,
        )

    # ------------------------------------------------------------ prefix cache
    def _start_cache(self, prefix: str, ids: list[int]) -> tuple[Any, int]:
        """A KV cache holding the longest cached token-prefix of ``ids``, and its length."""
        from transformers import DynamicCache

        if not self.config.prefix_cache:
            return DynamicCache(config=self.model.config), 0
        key = (self._active, prefix)
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
        self.model(
            input_ids=torch.tensor([prefix_ids], device=self.model.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
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

    def load_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter directory under ``name`` (replacing one of that name).

        It is loaded, not activated: call ``set_adapter(name)``.
        """
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name!r}: {path} holds no adapter_config.json")
        with self.lock:
            from peft import PeftModel

            t0 = time.perf_counter()
            if name in self._adapters:
                self._delete(name)
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self.model, str(path), adapter_name=name, is_trainable=False
                    )
                    # PeftModel activates what it loads; keep the base model until asked.
                    self._peft.base_model.disable_adapter_layers()
                else:
                    self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"adapter {name!r}: loading {path} failed: {exc}") from exc
            self._adapters[name] = path
            self._apply_active()
            logger.info("loaded adapter %s from %s in %.2f s", name, path, time.perf_counter() - t0)

    def set_adapter(self, name: str | None) -> None:
        """Activate a loaded adapter by name; None runs the base model."""
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
        if len(self._adapters) == 1:
            # PEFT will not delete the last adapter in use; a placeholder keeps the
            # wrappers valid, disabled, until the next load replaces it.
            self._peft.base_model.disable_adapter_layers()
        self._peft.delete_adapter(name)
        del self._adapters[name]
        for key in [k for k in self._prefixes if k[0] == name]:
            del self._prefixes[key]

    def _apply_active(self) -> None:
        if self._peft is None:
            return
        if self._active is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.set_adapter(self._active)
            self._peft.base_model.enable_adapter_layers()

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

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._token_text[token] = text
        return text


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None
