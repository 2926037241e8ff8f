"""Reviewed examples → token batches → the answer-only loss of a LoRA training run.

``tokenize`` renders each example as BOS + prompt + answer + EOS (a too-long prompt loses
its oldest tokens, never the answer); ``plan_batches`` orders them into length-bucketed,
seeded batches per epoch; ``collate`` pads them on the right into tensors whose labels
mark only the answer tokens; ``answer_loss`` runs the model body once to hidden states
and applies the vocabulary head (262k rows, the main cost of a small Gemma) only at
those answer positions; ``eval_loss`` averages it over a split.

It knows tokenizers, tensors and the Gemma model layout. It does not know the training
loop, optimizers, checkpoints, the registry or the gate: ``teacher.train.lora`` drives those.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from teacher.data.dataset import Example


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    n_prompt: int  # tokens before the answer; loss is on ids[n_prompt:]
    unsafe: float = -1.0  # the verdict (1 hazard, 0 safe) for a head term; -1: none


def tokenize(
    examples: list[Example], tokenizer, instructions: str, max_length: int, demos: tuple = ()
):
    """BOS + prompt + answer + EOS; a too-long prompt loses its oldest tokens, never the answer.

    The prompt is the edge's own (instructions and ``demos``), so the adapter learns under
    the prompt it will answer with.
    """
    out = []
    for ex in examples:
        prompt = ex.render_prompt(instructions, demos)
        prompt = tokenizer(prompt, add_special_tokens=False).input_ids
        answer = tokenizer(ex.target, add_special_tokens=False).input_ids
        answer = answer[: max_length // 2] + [tokenizer.eos_token_id]
        room = max_length - len(answer) - 1
        prompt = [tokenizer.bos_token_id] + prompt[-room:]
        verdict = float(ex.safety) if ex.prompt is None else -1.0  # the edge's format only
        out.append(Tokenized(prompt + answer, len(prompt), verdict))
    return out


def plan_batches(items: list[Tokenized], batch_size: int, seed: int, epoch: int):
    """Length-bucketed batches (little padding) in a seeded random order per epoch."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    chunks = [order[i : i + batch_size * 16] for i in range(0, len(order), batch_size * 16)]
    batches = []
    for chunk in chunks:
        chunk.sort(key=lambda i: len(items[i].ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int, device) -> dict:
    import torch

    width = max(len(t.ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.ids)
        ids[row, :n] = torch.tensor(t.ids)
        mask[row, :n] = 1
        labels[row, t.n_prompt : n] = ids[row, t.n_prompt : n]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
        "unsafe": torch.tensor([t.unsafe for t in items]).to(device),
        "last": torch.tensor([t.n_prompt - 1 for t in items]).to(device),
    }


def answer_loss(
    model,
    input_ids,
    attention_mask,
    labels,
    fused: bool = False,
    body=None,
    unsafe=None,
    last=None,
    probe=None,
):
    """Mean cross-entropy over answer tokens; the LM head runs only at those positions.
    With a ``probe`` (``teacher.train.probe``), plus its head term on the same pass's
    hidden states at each row's ``last`` prompt token, for the rows with an ``unsafe``
    verdict.

    ``model`` is a PEFT model (or a plain causal LM) of the Gemma family: its body
    (``.model``, or ``body``: e.g. a compiled view of it) gives hidden states, and its
    ``.lm_head`` maps only the gathered answer positions to logits. Batches are
    right-padded (``collate``), so causal attention alone is exact for every real token
    and no padding mask is passed: attention stays on the fused causal kernels.
    ``attention_mask`` is accepted for the batch dict's sake and not used.
    ``fused`` uses liger-kernel's chunked linear + cross-entropy instead (CUDA).
    Returns (loss, number of answer tokens).
    """
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    states = probe is not None and unsafe is not None
    out = (causal.model if body is None else body)(input_ids=input_ids, output_hidden_states=states)
    hidden = out.last_hidden_state
    targets = labels[:, 1:]
    where = targets != -100
    picked = hidden[:, :-1][where]
    wanted = targets[where]
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if fused and not cap and _liger_loss() is not None:
        loss = _liger_loss()(causal.lm_head.weight, picked, wanted)
    else:
        logits = causal.lm_head(picked).float()
        if cap:
            logits = (logits / cap).tanh() * cap
        loss = F.cross_entropy(logits, wanted)
    if states:
        loss = loss + probe.loss(out.hidden_states, last, unsafe)
    return loss, int(wanted.numel())


_LIGER: list = []


def _liger_loss():
    """liger-kernel's fused linear + cross-entropy (an optional CUDA speed-up), or None."""
    if not _LIGER:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            _LIGER.append(LigerFusedLinearCrossEntropyLoss())
        except ImportError:
            _LIGER.append(None)
    return _LIGER[0]


def eval_loss(model, items, batch_size, pad_id, device, body=None, probe=None) -> float:
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], pad_id, device)
            loss, n = answer_loss(model, **batch, body=body, probe=probe)
            total += float(loss) * n
            count += n
    model.train()
    return total / max(1, count)
