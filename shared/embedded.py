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

Decoding is a hand-written greedy loop that stops at EOS, at a stop sequence (cut from
the text) or at the token budget; the returned text starts with ``Answer:`` followed by
the continuation, so ``shared.answer.parse_answer`` works on it as on every backend's.
What makes it fast on a CPU, each keeping the greedy tokens of the plain model:

- the LM head (262k x 640, most of the per-token memory traffic) is first applied as an
  int8 copy (~3x less traffic); its 64 best candidates are rescored with the exact
  weights and the argmax, log-probability and top-5 alternatives come from those;
- a lean single-token step (the model's own modules, no mask building);
- prompt-lookup drafting: answers copy much of the scene and the format lines, so up to
  8 tokens following the latest earlier occurrence of the last 2-3 tokens are verified
  in one forward and the matching ones accepted (a wrong draft is cropped away).

Each can be switched off in ``EmbeddedModelConfig`` (bench/student.py measures each).

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
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from shared.backend import GenerateRequest, Generation, TokenLogprob
from shared.config import EmbeddedModelConfig
from shared.errors import BackendError, ModelError
from shared.skill import ANSWER_PRIMER, render_input, render_prefix

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 5
CANDIDATES = 64  # int8-head candidates rescored exactly per step
DRAFT_TOKENS = 8  # prompt-lookup draft length verified per forward
PREFIX_CACHE_ENTRIES = 8
_INT8_HEADS: dict[int, tuple[Any, Any]] = {}  # id(weight) -> (weakref to it, packed int8)
_INT8_LOCK = threading.Lock()


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
        self._adapters: dict[str, tuple[str, Path]] = {}  # name -> (PEFT name, folder)
        self._loads = 0
        self._active: str | None = None
        self._eos = self._eos_ids()
        self._token_text: dict[int, str] = {}
        self._int8_head: Any = None
        self._int8_thread: threading.Thread | None = None
        self._rope_tables: dict[str, tuple[Any, Any]] = {}
        cfg = self.model.config
        self._layer_kinds = sorted(set(getattr(cfg, "layer_types", None) or ()))
        self._fast_step = (
            getattr(cfg, "model_type", "") in ("gemma3_text", "gemma3")
            and getattr(cfg, "attn_logit_softcapping", None) is None
            and bool(self._layer_kinds)
        )
        self.model.eval()
        self._start_int8_head()

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
            self._int8_head = None

    def _generate(self, request: GenerateRequest) -> Generation:
        import torch

        t0 = time.perf_counter()
        prefix = render_prefix(request.system, request.demos)
        ids = self.tokenizer(prefix + render_input(request.input)).input_ids
        device = self.model.device
        out = _Output(self.tokenizer, request, self._eos)
        with torch.inference_mode():
            cache, cached = self._start_cache(prefix, ids)
            hidden = self._forward(torch.tensor([ids[cached:]], device=device), cache)[-1:]
            picked = self._pick(hidden)[0]
            ttft = time.perf_counter() - t0
            while not out.add(*picked):
                token = picked[0]
                draft = self._draft(ids + out.tokens, request.max_new_tokens - len(out.tokens))
                if not draft or not self._can_rewind(cache, len(draft) + 1):
                    picked = self._pick(self._step(token, cache))[0]
                    continue
                # Verify the draft in one forward: row j predicts what follows draft[:j].
                rows = self._forward(torch.tensor([[token, *draft]], device=device), cache)
                picks = self._pick(rows)
                accepted = 0
                done = False
                while accepted < len(draft) and picks[accepted][0] == draft[accepted]:
                    accepted += 1
                    done = out.add(*picks[accepted - 1])
                    if done:
                        break
                if done:
                    break
                if accepted < len(draft):
                    cache.crop(accepted - len(draft))
                picked = picks[accepted]
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
        )

    def _forward(self, input_ids: Any, cache: Any) -> Any:
        """Run tokens through the transformer (no LM head): hidden states [tokens, hidden]."""
        out = self.model.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.last_hidden_state[0]

    def _draft(self, context: list[int], budget: int) -> list[int]:
        """Prompt-lookup drafting: the tokens that followed the latest earlier occurrence
        of the context's last n-gram (n = 3, 2), up to DRAFT_TOKENS. Answers copy much
        of the scene text and the demonstrations' format lines, so drafts often hold.
        """
        budget = min(DRAFT_TOKENS, budget - 1)
        if not self.config.speculative or budget <= 0:
            return []
        for n in (3, 2):
            if len(context) <= n:
                continue
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == tail:
                    return context[start + n : start + n + budget]
        return []

    def _can_rewind(self, cache: Any, tokens: int) -> bool:
        window = getattr(self.model.config, "sliding_window", None)
        return window is None or cache.get_seq_length() + tokens < window - 1

    def _step(self, token: int, cache: Any) -> Any:
        """One decode step for one token: the same arithmetic as the Gemma 3 forward.

        It skips what a single new token does not need (attention masks: one query sees
        every cached key it may see, since the sliding-window cache already keeps only
        the window; the rotary module; per-layer keyword plumbing). Projections, norms
        and the MLP are the model's own modules, so PEFT's LoRA layers apply.
        """
        import torch
        import torch.nn.functional as F

        if not self._fast_step:
            return self._forward(torch.tensor([[token]], device=self.model.device), cache)
        body = self.model.model
        pos = cache.get_seq_length()
        x = body.embed_tokens(torch.tensor([[token]], device=self.model.device))
        rope = {kind: self._rope(kind, pos, x.dtype) for kind in self._layer_kinds}
        kinds = self.model.config.layer_types
        for i, layer in enumerate(body.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = attn.q_norm(q), attn.k_norm(k)
            cos, sin = rope[kinds[i]]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k, v = cache.update(k, v, i)
            o = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling, enable_gqa=True)
            o = attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            x = x + layer.post_attention_layernorm(o)
            h = layer.mlp(layer.pre_feedforward_layernorm(x))
            x = x + layer.post_feedforward_layernorm(h)
        return body.norm(x)[0]

    def _rope(self, kind: str, pos: int, dtype: Any) -> tuple[Any, Any]:
        """cos and sin of one position for one layer kind, from a table grown on demand."""
        import torch

        table = self._rope_tables.get(kind)
        if table is None or pos >= table[0].shape[0]:
            size = max(1024, 2 * pos + 1)
            rotary = self.model.model.rotary_emb
            positions = torch.arange(size, device=self.model.device)[None]
            probe = torch.zeros(1, dtype=dtype, device=self.model.device)
            cos, sin = rotary(probe, positions, kind)
            table = (cos[0], sin[0])
            self._rope_tables[kind] = table
        return table[0][pos].view(1, 1, 1, -1), table[1][pos].view(1, 1, 1, -1)

    def _pick(self, hidden: Any) -> list[tuple[int, TokenLogprob]]:
        """For each row of hidden states: the greedy token, its log-probability and the top 5.

        With the int8 head ready, the 64 best candidates of the int8 logits are rescored
        with the exact weights; the argmax is the exact one unless int8 rounding (about
        1 logit at worst across 262k tokens, measured) moves the true best token out of
        the top 64. The softmax normaliser uses the int8 logits for the other tokens
        (log-probabilities within ~0.02 of exact). All rows share one pass over the head.
        """
        import torch

        output = self.model.get_output_embeddings()
        head = self._int8_head if isinstance(output, torch.nn.Linear) else None
        if head is None:
            logp = torch.log_softmax(self._softcap(output(hidden).float()), dim=-1)
            values, indices = torch.topk(logp, TOP_LOGPROBS, dim=-1)
        else:
            approx = torch.ops.quantized.linear_dynamic(hidden.float(), head, True)
            candidates = torch.topk(approx, CANDIDATES, dim=-1).indices  # [rows, 64]
            rows = output.weight[candidates]  # [rows, 64, hidden]
            exact = torch.bmm(rows, hidden[:, :, None])[..., 0].float()
            exact = self._softcap(exact)
            approx = self._softcap(approx)
            approx.scatter_(1, candidates, exact)
            logz = torch.logsumexp(approx, dim=-1, keepdim=True)
            values, order = torch.topk(exact, TOP_LOGPROBS, dim=-1)
            values, indices = values - logz, torch.gather(candidates, 1, order)
        picks = []
        for ids, lps in zip(indices.tolist(), values.tolist(), strict=True):
            top = {self._text_of(i): v for i, v in zip(ids, lps, strict=True)}
            picks.append((ids[0], TokenLogprob(self._text_of(ids[0]), lps[0], top)))
        return picks

    def _softcap(self, logits: Any) -> Any:
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            import torch

            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------ int8 head
    def _start_int8_head(self) -> None:
        """Quantise a copy of the LM head to int8 in a background thread (CPU only).

        Until it is ready (~10 s on 2 busy cores) the exact full head is used, so start-up
        is not delayed. The copy costs vocab x hidden bytes (168 MB for Gemma 3 270M).
        """
        import torch

        if not self.config.int8_head or self.model.device.type != "cpu":
            return
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
            logger.info("no quantized CPU engine; the LM head stays exact")
            return
        self._int8_thread = threading.Thread(
            target=self._build_int8_head, name="int8-lm-head", daemon=True
        )
        self._int8_thread.start()

    def _build_int8_head(self) -> None:
        import torch

        t0 = time.perf_counter()
        weight = self.model.get_output_embeddings().weight
        try:
            with _INT8_LOCK, torch.inference_mode():
                # Backends sharing one model share one int8 head.
                ref, packed = _INT8_HEADS.get(id(weight), (None, None))
                if ref is None or ref() is not weight:
                    packed = _quantize_int8(weight)
                    key = id(weight)
                    _INT8_HEADS[key] = (
                        weakref.ref(weight, lambda _: _INT8_HEADS.pop(key, None)),
                        packed,
                    )
                self._int8_head = packed
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            logger.warning("int8 LM head unavailable, staying exact: %s", exc)
            return
        logger.info("int8 LM head ready in %.1f s", time.perf_counter() - t0)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until background preparation (the int8 head) is done; True if it is."""
        if self._int8_thread is not None:
            self._int8_thread.join(timeout)
        return self._int8_thread is None or not self._int8_thread.is_alive()

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
            self._forward(torch.tensor([prefix_ids], device=self.model.device), cache)
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
        """Load a PEFT LoRA adapter directory under ``name``; it is not activated.

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

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._token_text[token] = text
        return text


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
        self.cut = _first_stop(self.text, self.request.stop)
        return self.cut is not None or len(self.tokens) >= self.request.max_new_tokens

    def result(self) -> tuple[str, list[TokenLogprob]]:
        """The text up to the first stop sequence and the log-probabilities of its tokens."""
        if self.cut is None:
            return self.text, self.logprobs
        kept = [lp for lp, o in zip(self.logprobs, self.offsets, strict=True) if o < self.cut]
        return self.text[: self.cut], kept


def _quantize_int8(weight: Any) -> Any:
    """Per-row symmetric int8 copy of a [vocab, hidden] matrix, packed for quantized.linear."""
    import torch

    full = weight.detach().float()
    scales = full.abs().amax(dim=1).clamp_min(1e-8) / 127.0
    q = torch.round(full / scales[:, None]).to(torch.int8)
    del full
    zero = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # PyTorch marks quantized tensors deprecated; if they go, the head stays exact.
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qweight, None)


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None
