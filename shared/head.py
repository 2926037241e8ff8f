"""The safety head: p(unsafe) from what the student computed anyway, judged by a linear model.

    head = SafetyHead.load(release / "head.safetensors")
    request = GenerateRequest(..., hidden_layers=head.layers)    # asks the backend for features
    gen = backend.generate(request)
    p = head.p_unsafe(head.features(gen))                         # one dot product

Two kinds, so that every backend gets a p(unsafe):

- ``hidden``: a logistic regression over the student's hidden states at the last prompt
  token (the ``Answer:`` primer), at a few layers (by default the middle and the last),
  standardised. The embedded backend returns them from the very forward pass that
  answers the input (prefix cache and adapter included), so the head costs one
  matrix-vector product. Measured on unseen scenes: AUC 0.98 from 40 training scenes,
  where the model's own "SAFETY:" line scored accuracy 0.58.
- ``verdict``: for backends without hidden states (Ollama), the same logistic fit on one
  feature, the log-odds the student put on "yes" at its SAFETY verdict token (Platt
  scaling of the verdict's log-probability).

``fit_head`` trains either kind in seconds on a CPU (L-BFGS, L2-regularised, fp64 numpy
Newton steps: the problem is small and convex). Saved as safetensors with the layers and
kind in the metadata; never pickled.

This module knows nothing about releases, policies or thresholds: it maps features to a
probability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.answer import verdict_confidence
from shared.backend import Generation, TokenLogprob
from shared.errors import ModelError
from shared.keyword_memory import SketchError, Sketches, sketch

HEAD_FILE = "head.safetensors"
KINDS = ("hidden", "verdict")
VERDICT_CLIP = 1e-4  # p(yes) is clipped to [1e-4, 1 - 1e-4] before the log-odds


@dataclass(frozen=True)
class SafetyHead:
    kind: str
    layers: tuple[int, ...]  # hidden-state indices (0 = embeddings, L = the last layer)
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    info: dict = field(default_factory=dict)  # what it was trained on (n, l2, train AUC)
    # the reviewed keyword cases in this head's feature space (shared.keyword_memory)
    sketches: Sketches | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ModelError(f"safety head kind {self.kind!r} is not one of {KINDS}")
        d = self.weight.shape[0]
        if self.mean.shape != (d,) or self.std.shape != (d,):
            raise ModelError(
                f"safety head shapes disagree: weight {self.weight.shape}, mean "
                f"{self.mean.shape}, std {self.std.shape}"
            )
        for name in ("mean", "std", "weight"):
            bad = int(np.count_nonzero(~np.isfinite(getattr(self, name))))
            if bad:
                raise ModelError(f"safety head {name} has {bad} non-finite values (NaN or inf)")
        if not math.isfinite(self.bias):
            raise ModelError(f"safety head bias is {self.bias} (not finite)")
        if d and float(np.min(np.abs(self.std))) <= 0.0:
            raise ModelError("safety head std has a zero: standardising would divide by zero")
        if any(i < 0 for i in self.layers):
            raise ModelError(f"safety head layers {self.layers}: a layer index is negative")
        if self.sketches is not None and len(self.sketches) and self.sketches.dim != d:
            raise ModelError(f"keyword sketches have {self.sketches.dim} features, the head {d}")

    def sketch(self, features: np.ndarray | None) -> np.ndarray | None:
        """``features`` as the keyword sketches hold them (standardised, unit length)."""
        if features is None or self.kind != "hidden":
            return None
        return sketch(self.mean, self.std, features)

    def keywords_near_safe(self, features: np.ndarray | None) -> frozenset[str]:
        """The keywords whose nearest remembered reviewed case is a safe lookalike."""
        if self.sketches is None:
            return frozenset()
        return self.sketches.near_safe(self.sketch(features))

    @property
    def engine(self) -> str:
        """The engine whose hidden states it was fit on (heads from before engines were
        recorded were all fit on torch's)."""
        return str(self.info.get("engine", "torch"))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    # ------------------------------------------------------------ inference
    def features(self, gen: Generation) -> np.ndarray | None:
        """The head's input from a generation: hidden states, or the verdict's log-odds."""
        if self.kind == "hidden":
            if gen.hidden is None:
                return None
            return np.asarray(gen.hidden, dtype=np.float64)
        value = verdict_logodds(gen.text, gen.logprobs)
        return None if value is None else np.array([value])

    def p_unsafe(self, features: Sequence[float] | np.ndarray | None) -> float | None:
        """p(unsafe) for one feature vector; None when the backend gave no features."""
        if features is None:
            return None
        x = np.asarray(features, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ModelError(
                f"safety head expects {self.dim} features, got shape {x.shape} "
                "(a head trained for another model or other layers?)"
            )
        z = float(((x - self.mean) / self.std) @ self.weight + self.bias)
        return _sigmoid(z)

    def p_unsafe_many(self, features: np.ndarray) -> np.ndarray:
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.std) @ self.weight
        return 1.0 / (1.0 + np.exp(-(z + self.bias)))

    # ------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {
            "mean": self.mean.astype(np.float32),
            "std": self.std.astype(np.float32),
            "weight": self.weight.astype(np.float32),
            "bias": np.array([self.bias], dtype=np.float32),
        }
        # One metadata key: safetensors orders several at random, and the bytes must not vary.
        doc = {"kind": self.kind, "layers": list(self.layers), "info": self.info}
        if self.sketches is not None:
            more, doc["sketch_keywords"] = self.sketches.to_tensors()
            tensors.update(more)
        return save(tensors, metadata={"head": json.dumps(doc, sort_keys=True)})

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = HEAD_FILE) -> SafetyHead:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            tensors = load(data)
            meta = json.loads(safetensors_metadata(data)["head"])
            weight = tensors["weight"].astype(np.float64)
            sketches = Sketches.from_tensors(
                tensors, meta.get("sketch_keywords", []), int(weight.shape[0])
            )
            return cls(
                kind=meta["kind"],
                layers=tuple(int(i) for i in meta["layers"]),
                mean=tensors["mean"].astype(np.float64),
                std=tensors["std"].astype(np.float64),
                weight=weight,
                bias=float(tensors["bias"][0]),
                info=dict(meta.get("info", {})),
                sketches=sketches,
            )
        except SketchError as exc:
            raise ModelError(f"{source}: {exc}") from None
        except (
            SafetensorError,
            KeyError,
            ValueError,
            IndexError,
            TypeError,
            AttributeError,
        ) as exc:
            raise ModelError(f"{source}: not a safety head ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: Path) -> SafetyHead:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read the safety head: {exc}") from None
        return cls.from_bytes(data, str(path))


def safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors blob (the header is JSON after an 8-byte size)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def verdict_logodds(text: str, logprobs: list[TokenLogprob] | None) -> float | None:
    """log(p(yes) / p(no)) at the student's SAFETY verdict token, or None without one."""
    from shared.answer import parse_answer

    conf = verdict_confidence(logprobs)
    if conf is None:
        return None
    said_yes = parse_answer(text).safety
    if said_yes is None:
        return None
    p_yes = conf if said_yes else 1.0 - conf
    p_yes = min(max(p_yes, VERDICT_CLIP), 1 - VERDICT_CLIP)
    return math.log(p_yes / (1 - p_yes))


def default_layers(num_hidden_layers: int) -> tuple[int, ...]:
    """The middle and the last layer's output (index 0 is the embeddings)."""
    return (num_hidden_layers // 2, num_hidden_layers)


# ---------------------------------------------------------------- fitting
def fit_head(
    features: np.ndarray,
    labels: Sequence[bool],
    *,
    kind: str = "hidden",
    layers: Sequence[int] = (),
    l2: float = 1e-2,
    iterations: int = 50,
    prior: SafetyHead | None = None,
    weights: Sequence[float] | None = None,
) -> SafetyHead:
    """Standardise, then L2-regularised logistic regression by Newton's method.

    ``l2`` is the penalty per case on the standardised weights (the objective is the mean
    log-loss + l2/2 |w - w0|^2), so it means the same for 40 cases or 4,000. ``w0`` is 0,
    or with a ``prior`` head (the parent release's) its weights, in its standardisation:
    the new head is the parent moved only as far as the new cases ask, so a few dozen
    reviews cannot swing it on what they do not cover. ``weights`` (positive, one per case;
    None: all 1) weigh each case's log-loss, scaled to mean 1 so ``l2`` means the same.
    Newton on the dual-sized system: with d features and n cases it solves an n x n
    system when n < d (the hidden head: ~1,300 features, a few hundred cases), else d x d.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ModelError(f"fit_head: {x.shape} features for {y.shape[0]} labels")
    if y.min(initial=1) == y.max(initial=0):
        raise ModelError(
            f"fit_head: the {len(y)} training cases all have one label; "
            "a safety head needs unsafe and safe cases"
        )
    if weights is None:
        c = np.ones(len(y))
    else:
        c = np.asarray(weights, dtype=np.float64)
        if c.shape != y.shape or not np.all(np.isfinite(c)) or c.min(initial=1.0) <= 0:
            raise ModelError(f"fit_head: weights must be {len(y)} positive numbers")
        c = c / c.mean()
    if prior is not None and prior.dim != x.shape[1]:
        raise ModelError(
            f"fit_head: the prior head has {prior.dim} features, the cases {x.shape[1]}"
        )
    if prior is not None:  # the parent's scale, so its weights are the centre of the penalty
        mean, std, w0 = prior.mean, prior.std, np.asarray(prior.weight, dtype=np.float64)
    else:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std < 1e-6] = 1.0
        w0 = np.zeros(x.shape[1])
    z = (x - mean) / std
    n, d = z.shape
    w = w0.copy()
    rate = float(np.average(y, weights=c))
    b = math.log(rate / (1 - rate)) if prior is None else float(prior.bias)

    def objective(w: np.ndarray, b: float) -> float:
        m = z @ w + b
        loss = np.mean(c * (np.logaddexp(0.0, m) - y * m))
        return float(loss + 0.5 * l2 * np.sum((w - w0) ** 2))

    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        s = c * np.clip(p * (1 - p), 1e-9, None)
        gw = z.T @ (c * (p - y)) / n + l2 * (w - w0)
        gb = float((c * (p - y)).mean())
        # Newton step on (w, b): H = Z^T S Z / n + l2 I (w), with the bias folded in.
        za = np.hstack([z, np.ones((n, 1))])
        reg = np.full(d + 1, float(l2))  # float: an int penalty would zero the bias term
        reg[-1] = 1e-4  # the bias is all but free
        g = np.append(gw, gb)
        if n < d:  # Woodbury: (A + Za^T S Za / n)^-1 with A = diag(reg)
            a_inv = 1.0 / reg
            zs = za * a_inv
            inner = np.diag(n / s) + zs @ za.T
            step = a_inv * g - a_inv * (za.T @ np.linalg.solve(inner, zs @ g))
        else:
            hess = (za.T * s) @ za / n + np.diag(reg)
            step = np.linalg.solve(hess, g)
        # Backtracking: from a start that already separates the cases (a prior head), the
        # curvature is nearly zero and a full Newton step can overshoot.
        f, t = objective(w, b), 1.0
        while True:
            w_new, b_new = w - t * step[:-1], b - t * step[-1]
            if objective(w_new, b_new) <= f + 1e-12 or t < 1e-6:
                break
            t /= 2
        w, b = w_new, b_new
        if float(np.abs(t * step).max()) < 1e-8:
            break
    p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    info = {"n": int(n), "unsafe": int(y.sum()), "l2": l2, "train_auc": round(auc(p, y), 4)}
    if weights is not None:
        info["weighted"] = True
    if prior is not None:
        info["prior"] = True  # pulled toward the parent release's head, not toward 0
    return SafetyHead(kind, tuple(int(i) for i in layers), mean, std, w, float(b), info)


def average_heads(heads: Sequence[SafetyHead], info: dict | None = None) -> SafetyHead:
    """One head whose log-odds are the mean of ``heads``' log-odds (a linear head again).

    Each head computes ``w_k . (x - m_k) / s_k + b_k``; their mean is ``W . x + B`` with
    ``W = mean(w_k / s_k)`` and ``B = mean(b_k - w_k . m_k / s_k)``, written back in the
    heads' mean standardisation. Cross-fitting ships this: the heads fitted with one fold
    each left out, whose out-of-fold scores chose the thresholds.
    """
    if not heads:
        raise ModelError("average_heads: no heads")
    first = heads[0]
    for head in heads[1:]:
        if (head.kind, head.layers, head.dim) != (first.kind, first.layers, first.dim):
            raise ModelError(
                f"average_heads: a {head.kind} head on layers {head.layers} ({head.dim} "
                f"features) cannot join a {first.kind} head on {first.layers} ({first.dim})"
            )
    raw_w = np.mean([h.weight / h.std for h in heads], axis=0)
    raw_b = float(np.mean([h.bias - float(np.dot(h.weight / h.std, h.mean)) for h in heads]))
    mean = np.mean([h.mean for h in heads], axis=0)
    std = np.mean([h.std for h in heads], axis=0)
    weight = raw_w * std
    bias = raw_b + float(np.dot(raw_w, mean))
    return SafetyHead(first.kind, first.layers, mean, std, weight, bias, dict(info or {}))


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (ties count half); 0.5 when one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
