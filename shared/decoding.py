"""Fast greedy decoding of a causal LM on a small CPU, keeping the plain model's tokens.

    decoder = GreedyDecoder(model, tokenizer)           # starts the int8 head in background
    with torch.inference_mode():
        first, _ = decoder.prefill(prompt_ids[cached:], cache)  # the greedy token after them
        decoder.decode(prompt_ids, cache, first, out, max_new_tokens)

``decode`` hands each greedy token with its log-probability and top-5 alternatives
(``shared.backend.TokenLogprob``) to ``out.add``, which says when to stop. What makes it
fast, each keeping the greedy tokens of the plain model:

- the LM head (262k x 640, most of the per-token memory traffic) is first applied as an
  int8 copy (~3x less traffic); its 64 best candidates are rescored with the exact
  weights and the argmax, log-probability and top-5 alternatives come from those;
- a lean single-token step (the model's own modules, no mask building) for Gemma 3;
- prompt-lookup drafting: answers copy much of the scene and the format lines, so up to
  8 tokens following the latest earlier occurrence of the last 2-3 tokens are verified
  in one forward and the matching ones accepted (a wrong draft is cropped away).

The int8 head and drafting can be switched off; models other than Gemma 3 take the
model's own forward for each step.

This module knows nothing about prompts, prefix caches, adapters, stop sequences or
locking: the caller builds the KV cache, decides when to stop, and serialises calls
(a decoder is not thread-safe). It does not know what the tokens mean.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from typing import Any, Protocol

from shared.backend import TOP_LOGPROBS, TokenLogprob

logger = logging.getLogger(__name__)

CANDIDATES = 64  # int8-head candidates rescored exactly per step
DRAFT_TOKENS = 8  # prompt-lookup draft length verified per forward
_INT8_HEADS: dict[int, tuple[Any, Any]] = {}  # id(weight) -> (weakref to it, packed int8)
_INT8_LOCK = threading.Lock()
# transformers 5.x renamed past_key_values to cache and warns on every call; both work
# until 5.40, and the old name works on every 5.x this project allows.
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)

Pick = tuple[int, TokenLogprob]


class TokenSink(Protocol):
    """Where the greedy tokens go: ``add`` returns True when decoding must end."""

    tokens: list[int]  # the tokens accepted so far (the drafting context's tail)

    def add(self, token: int, logprob: TokenLogprob) -> bool: ...


class GreedyDecoder:
    """Greedy decoding with an int8 candidate head, a lean step and prompt-lookup drafts."""

    def __init__(
        self, model: Any, tokenizer: Any, *, int8_head: bool = True, speculative: bool = True
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.speculative = speculative
        self._token_text: dict[int, str] = {}
        self._int8_head: Any = None
        self._int8_thread: threading.Thread | None = None
        self._rope_tables: dict[str, tuple[Any, Any]] = {}
        cfg = model.config
        self._layer_kinds = sorted(set(getattr(cfg, "layer_types", None) or ()))
        self._fast_step = (
            getattr(cfg, "model_type", "") in ("gemma3_text", "gemma3")
            and getattr(cfg, "attn_logit_softcapping", None) is None
            and bool(self._layer_kinds)
        )
        if int8_head:
            self._start_int8_head()

    @property
    def int8_ready(self) -> bool:
        """True once the int8 head is built (until then the exact head is used)."""
        return self._int8_head is not None

    def close(self) -> None:
        """Wait for the int8 head's thread, then drop the head (the exact one stays)."""
        self.wait_ready()
        self._int8_head = None

    # ------------------------------------------------------------ decoding
    def prefill(
        self, ids: list[int], cache: Any, layers: tuple[int, ...] = (), pick: bool = True
    ) -> tuple[Pick | None, list[float] | None]:
        """Run ``ids`` into ``cache``: the greedy token that follows them (``pick``), and
        the last token's hidden states at ``layers`` concatenated (0 = the embeddings, L =
        the last layer, after the final norm), or None when no layers are asked for."""
        import torch

        input_ids = torch.tensor([ids], device=self.model.device)
        if not layers:
            hidden = self.forward(input_ids, cache)[-1:]
            return (self.pick(hidden)[0] if pick else None), None
        out = self.model.model(
            input_ids=input_ids, past_key_values=cache, use_cache=True, output_hidden_states=True
        )
        states = out.hidden_states
        try:
            rows = [states[i][0, -1] for i in layers]
        except IndexError:
            raise ValueError(
                f"hidden layers {layers} asked of a model with {len(states) - 1} layers"
            ) from None
        features = torch.cat(rows).float().tolist()
        picked = self.pick(out.last_hidden_state[0][-1:])[0] if pick else None
        return picked, features

    def decode(
        self, context: list[int], cache: Any, picked: Pick, out: TokenSink, max_new_tokens: int
    ) -> None:
        """Hand ``picked`` and the greedy tokens after it to ``out`` until it says stop.

        ``context`` is the prompt already in ``cache``; drafts are looked up in it and in
        ``out.tokens``; ``max_new_tokens`` bounds the drafts (``out`` enforces it).
        """
        import torch

        device = self.model.device
        while not out.add(*picked):
            token = picked[0]
            draft = self.draft(context + out.tokens, max_new_tokens - len(out.tokens))
            if not draft or not self.can_rewind(cache, len(draft) + 1):
                picked = self.pick(self.step(token, cache))[0]
                continue
            # Verify the draft in one forward: row j predicts what follows draft[:j].
            rows = self.forward(torch.tensor([[token, *draft]], device=device), cache)
            picks = self.pick(rows)
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

    def forward(self, input_ids: Any, cache: Any) -> Any:
        """Run tokens through the transformer (no LM head): hidden states [tokens, hidden]."""
        out = self.model.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.last_hidden_state[0]

    def draft(self, context: list[int], budget: int) -> list[int]:
        """Prompt-lookup drafting: the tokens that followed the latest earlier occurrence
        of the context's last n-gram (n = 3, 2), up to DRAFT_TOKENS. Answers copy much
        of the scene text and the demonstrations' format lines, so drafts often hold.
        """
        budget = min(DRAFT_TOKENS, budget - 1)
        if not self.speculative or budget <= 0:
            return []
        for n in (3, 2):
            if len(context) <= n:
                continue
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == tail:
                    return context[start + n : start + n + budget]
        return []

    def can_rewind(self, cache: Any, tokens: int) -> bool:
        """Whether ``tokens`` more can enter the cache and be cropped away again."""
        window = getattr(self.model.config, "sliding_window", None)
        return window is None or cache.get_seq_length() + tokens < window - 1

    def step(self, token: int, cache: Any) -> Any:
        """One decode step for one token: the same arithmetic as the Gemma 3 forward.

        It skips what a single new token does not need (attention masks: one query sees
        every cached key it may see, since the sliding-window cache already keeps only
        the window; the rotary module; per-layer keyword plumbing). Projections, norms
        and the MLP are the model's own modules, so PEFT's LoRA layers apply.
        """
        import torch
        import torch.nn.functional as F

        if not self._fast_step:
            return self.forward(torch.tensor([[token]], device=self.model.device), cache)
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

    def pick(self, hidden: Any) -> list[Pick]:
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

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._token_text[token] = text
        return text

    # ------------------------------------------------------------ int8 head
    def _start_int8_head(self) -> None:
        """Quantise a copy of the LM head to int8 in a background thread (CPU only).

        Until it is ready (~10 s on 2 busy cores) the exact full head is used, so start-up
        is not delayed. The copy costs vocab x hidden bytes (168 MB for Gemma 3 270M).
        """
        import torch

        if self.model.device.type != "cpu":
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
                # Decoders sharing one model share one int8 head.
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
        """Block until the int8 head's background build is done; True if it is."""
        if self._int8_thread is not None:
            self._int8_thread.join(timeout)
        return self._int8_thread is None or not self._int8_thread.is_alive()


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
