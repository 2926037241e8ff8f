"""Exact binomial bounds, the arithmetic behind every certified rate: the one-sided
Clopper-Pearson upper bound on a rate after k events in n trials, and the fewest trials
for which zero events certify a rate (``shared.calibration`` certifies thresholds with
them; ``teacher.release.gate`` holds releases to recall floors with them).
"""

from __future__ import annotations

import math
from functools import lru_cache

TOLERANCE = 1e-9  # the bisection's width; the bound is rounded up to it


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(Bin(n, p) <= k) for 0 < p < 1, summed in log space."""
    log_p, log_q = math.log(p), math.log1p(-p)
    head = math.lgamma(n + 1)
    terms = [
        head - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
        for j in range(k + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@lru_cache(maxsize=4096)
def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1-delta) upper bound on a binomial rate after k events in n trials.

    The bound is the p with P(Bin(n, p) <= k) = delta, found by bisection on the binomial
    CDF in log space to within 1e-9 and rounded up (the bound errs on the safe side).
    ``n == 0`` and ``k == n`` give 1.0.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0 or k == n:
        return 1.0
    log_delta = math.log(delta)
    lo, hi = 0.0, 1.0  # the CDF falls as p grows: above the root it is below delta
    while hi - lo > TOLERANCE:
        mid = (lo + hi) / 2
        if _log_binom_cdf(k, n, mid) > log_delta:
            lo = mid
        else:
            hi = mid
    return hi


def _min_cases(max_rate: float, delta: float) -> int:
    """Fewest trials for which zero events certify a rate <= ``max_rate`` at ``delta``."""
    if max_rate >= 1:
        return 0
    # Closed form for k = 0: 1 - delta ** (1 / n) <= max_rate. Start a little below it and
    # walk up, so the answer agrees with the bisection bound exactly.
    n = max(1, math.ceil(math.log(delta) / math.log1p(-max_rate)) - 2)
    while clopper_pearson_upper(0, n, delta) > max_rate:
        n += 1
    return n


def min_unsafe_cases(recall_target: float, delta: float) -> int:
    """Fewest unsafe calibration cases for which a zero-miss result certifies the target.

    The smallest n with ``clopper_pearson_upper(0, n, delta) <= 1 - recall_target``. Pass
    the delta the recall test runs at (``calibrate`` uses ``delta / 2``).
    """
    if not 0 < recall_target < 1:
        raise ValueError(f"recall_target must be in (0, 1), got {recall_target}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return _min_cases(1 - recall_target, delta)
