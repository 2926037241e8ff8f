"""The release gate: does a candidate release beat what the edges run now?

    verdict = compare(candidate, active, recall_target, sites=site_of)  # GateVerdict

Both reports come from ``teacher.release.harness`` on the same frozen split, so they are what
an edge running either release would have done with those cases: its prompt, adapter,
head, thresholds and policy. The frozen split has groups: the **generic** cases (the
labelled scenes the teacher started from) and, per site (an edge), the hashed share of
that site's reviewed cases that joined it (``teacher.data.dataset.site_members``). In
every group with hazards, a candidate ships only if

1. its system safety recall (alerted or escalated) is not below ``recall_target``
   beyond doubt: the one-sided Clopper-Pearson upper bound at ``1 - delta`` on the
   group's hazards it caught must reach the target. On the generic hazards this is the
   floor every release keeps, whatever site it serves. (The target itself is certified
   by the candidate's calibration; a few dozen frozen hazards cannot certify it again.)
   A site's share holds few hazards, and they are the hard ones (its reviewed cases), so
   there the doubt is split among the sites, ``delta / (2 x sites)``: one miss in two is
   not beyond doubt (seen refusing four builds in a row on a tuning run), four in six are.
2. it does not miss more of the group's hazards than the active release, by an **exact
   one-sided McNemar test** on the same hazards: of the discordant pairs (caught by one
   release, missed by the other), the share the candidate misses must not be significant
   at ``alpha`` (binomial with p = 1/2). One or two extra misses among 33 hazards with
   none gained (p 0.5, 0.25) are noise; five (p 0.031) are not.
3. it does not cost more teacher calls than the active release beyond noise, by the same
   exact one-sided McNemar test on escalations: of the frozen cases one release escalates
   and the other does not, the share the candidate escalates must not be significant at
   ``alpha``, on the whole split and on each site's share.

With ``must_gain`` it must also gain: fewer teacher calls per 100 inputs on the whole frozen
split or on a site's share, or a higher student accuracy. That was the rule until stop 34:
it refused one or two builds a run on the factory and held-out sites, and a head fitted on
more of a site's reviews rarely beats the running one on the few frozen cases at once
(``bench/replay.py`` compares both gates on cached features). Every failed rule is named
in ``reasons``; the gains are reported either way. It knows nothing about models,
registries or datasets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.binomial import clopper_pearson_upper
from teacher.release.harness import HarnessReport

EPSILON = 1e-9  # rates computed on the same cases: only a real difference counts
ALPHA = 0.05  # the paired test's one-sided level
GENERIC = "generic"


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    groups: dict = field(default_factory=dict)  # group -> what each rule saw there


def mcnemar_worse(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value that the candidate misses more: P(X >= worse) for
    X ~ Binomial(worse + better, 1/2), the discordant pairs."""
    n = worse + better
    if worse == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


def _hazard_groups(report: HarnessReport, sites: dict[str, str]) -> dict[str, set[str]]:
    """Group -> ids of the frozen hazards in it (generic first)."""
    groups: dict[str, set[str]] = {GENERIC: set()}
    if report.cases:
        for case in report.cases:
            if case.label:
                groups.setdefault(sites.get(case.id) or GENERIC, set()).add(case.id)
    else:  # a summary without cases: every hazard is generic
        groups[GENERIC] = {f"#{i}" for i in range(report.hazards)}
    return groups


def _calls_per_100(report: HarnessReport, ids: set[str]) -> float:
    escalated = set(report.escalated or ())
    return 100.0 * len(ids & escalated) / len(ids) if ids else 0.0


def _dearer(candidate: HarnessReport, active: HarnessReport, ids: set[str] | None) -> tuple:
    """(cases only the candidate escalates, cases only the active one does, McNemar p) on
    the frozen cases ``ids`` (None: all of them)."""
    mine, theirs = set(candidate.escalated or ()), set(active.escalated or ())
    if ids is not None:
        mine, theirs = mine & ids, theirs & ids
    worse, better = len(mine - theirs), len(theirs - mine)
    return worse, better, mcnemar_worse(worse, better)


def compare(
    candidate: HarnessReport,
    active: HarnessReport,
    recall_target: float,
    delta: float = 0.1,
    sites: dict[str, str] | None = None,
    alpha: float = ALPHA,
    must_gain: bool = False,
) -> GateVerdict:
    """Is ``candidate`` at least as good as ``active`` on the frozen split, beyond noise
    (and better, with ``must_gain``; see the module docstring)? ``sites``: frozen case id ->
    the site it came from; the rest is generic."""
    if candidate.n == 0:
        return GateVerdict(False, ["the frozen evaluation split is empty"])
    sites = sites or {}
    c, a = candidate, active
    reasons, seen = [], {}
    missed_c, missed_a = set(c.missed), set(a.missed)
    groups = {g: h for g, h in _hazard_groups(c, sites).items() if h}
    site_groups = max(1, sum(g != GENERIC for g in groups))
    for group, hazards in groups.items():
        doubt = delta if group == GENERIC else delta / (2 * site_groups)
        where = f" on the {group} hazards" if len(groups) > 1 or group != GENERIC else ""
        if c.cases:
            caught = len(hazards - missed_c)
            worse = len(hazards & (missed_c - missed_a))
            better = len(hazards & (missed_a - missed_c))
        else:  # a summary without cases: hazards are counted, misses named
            caught = c.hazards - len(missed_c)
            worse, better = len(missed_c - missed_a), len(missed_a - missed_c)
        n = len(hazards)
        bound = clopper_pearson_upper(caught, n, doubt)
        p = mcnemar_worse(worse, better)
        seen[group] = dict(hazards=n, caught=caught, bound=round(bound, 4), p=round(p, 4))
        seen[group].update(worse=worse, better=better)
        if bound < recall_target - EPSILON:
            shown = sorted(hazards & missed_c) if c.cases else sorted(missed_c)
            reasons.append(
                f"system safety recall{where} {caught / n:.3f} ({caught}/{n}) is below the "
                f"target {recall_target:.2f} beyond doubt (upper {1 - doubt:.0%} bound "
                f"{bound:.3f})" + (f"; missed: {', '.join(shown[:5])}" if shown else "")
            )
        if p < alpha:
            reasons.append(
                f"system safety recall{where} fell against the active release v{a.release} "
                f"beyond noise: {worse} hazard(s) it missed that v{a.release} caught, "
                f"{better} the other way (exact McNemar p {p:.3f} < {alpha})"
            )
    shares = {
        name: {i for i, s in sites.items() if s == name} for name in sorted(set(sites.values()))
    }
    if c.escalated is not None and a.escalated is not None:  # both scored case by case
        scopes = [("calls", None, "")] + [
            (f"calls on {name}", ids, f" on {name}'s share") for name, ids in shares.items()
        ]
        for key, ids, where in scopes:
            worse, better, p = _dearer(c, a, ids)
            seen[key] = dict(worse=worse, better=better, p=round(p, 4))
            if p < alpha:
                reasons.append(
                    f"teacher calls rose{where} against the active release v{a.release} beyond "
                    f"noise: {worse} case(s) it escalates that v{a.release} does not, {better} "
                    f"the other way (exact McNemar p {p:.3f} < {alpha})"
                )
    gains = []
    if c.teacher_calls_per_100 < a.teacher_calls_per_100 - EPSILON:
        gains.append("calls")
    if c.accuracy > a.accuracy + EPSILON:
        gains.append("accuracy")
    for site, ids in shares.items():
        if _calls_per_100(c, ids) < _calls_per_100(a, ids) - EPSILON:
            gains.append(f"calls on {site}")
    if must_gain and not gains:
        reasons.append(
            "no gain over the active release: teacher calls per 100 "
            f"{a.teacher_calls_per_100:.1f} -> {c.teacher_calls_per_100:.1f}, student accuracy "
            f"{a.accuracy:.3f} -> {c.accuracy:.3f}" + (", and on no site's share" if sites else "")
        )
    return GateVerdict(not reasons, reasons, {**seen, "gains": gains})
