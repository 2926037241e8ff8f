"""The head term of a LoRA objective: train the adapter so the safety head's classes separate.

    probe = SafetyProbe(layers=(9, 18), size=640, weight=1.0)   # train.objective: answer+head
    loss = answer_loss(model, **batch, probe=probe)             # teacher.train.batches

The edge's safety head is a linear model on hidden states at the last prompt token
(``shared.head``: the middle layer and the final norm). With ``train.objective:
answer+head`` a LoRA is trained on the answer tokens as before plus, with weight
``train.head_weight``, the logistic loss of a linear probe on those same states, fitted
jointly: the adapter is pushed to make hazards and safe scenes linearly separable where
the head reads them. The probe itself is thrown away: every build refits the shipped head
on the adapted model's states, on the engine the edges run, and calibrates it
(``teacher.release.head_fit``); the release ships the adapter only where it lowers
teacher calls (``release.lora_must_pay``).

Each layer's state is divided by its root mean square first (Gemma's residual stream runs
to the hundreds), so the probe sees directions and the loss does not depend on their
scale. It knows tensors only: no datasets, configs or files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SafetyProbe(torch.nn.Module):
    def __init__(self, layers: tuple[int, ...], size: int, weight: float = 1.0):
        super().__init__()
        self.layers = tuple(layers)
        self.weight = float(weight)
        self.linear = torch.nn.Linear(size * len(self.layers), 1)

    def loss(self, hidden_states, last: torch.Tensor, unsafe: torch.Tensor) -> torch.Tensor:
        """Weighted logistic loss on the rows with a verdict (``unsafe`` 0 or 1; -1: an
        example in another prompt format, left out); ``last``: each row's last prompt
        token; ``hidden_states``: the model body's, index 0 the embeddings."""
        rows = unsafe >= 0
        if not bool(rows.any()):
            return hidden_states[-1].sum() * 0.0  # keeps the graph whole
        picked = torch.nonzero(rows).squeeze(-1)
        where = last[picked]
        parts = []
        for layer in self.layers:
            state = hidden_states[layer][picked, where].float()
            parts.append(state / state.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
        logits = self.linear(torch.cat(parts, -1)).squeeze(-1)
        return self.weight * F.binary_cross_entropy_with_logits(logits, unsafe[picked].float())
