"""The gate judges a site's share and the generic hazards apart, by a paired exact test."""

from shared.answer import Answer
from shared.policy import Decision
from teacher.release import gate
from teacher.release.harness import CaseResult, HarnessReport


def report(release, cases):
    """A harness report of (id, hazard?, caught?, escalated?) cases."""
    results = [
        CaseResult(i, label, Answer("", None, None, True, ""),
                   Decision(escalate=esc, reasons=(), alert=caught and not esc), 1, 0.1)
        for i, label, caught, esc in cases
    ]  # fmt: skip
    hazards = [c for c in cases if c[1]]
    missed = [c[0] for c in hazards if not c[2]]
    calls = 100.0 * sum(c[3] for c in cases) / len(cases)
    recall = 1 - len(missed) / len(hazards)
    return HarnessReport(release, len(cases), 1.0, 0.9, 1.0, 1.0, 0.5, 1.0, 1.0, recall, calls,
                         0.0, 0.0, 0.0, 0.1, 0.2, hazards=len(hazards), missed=missed,
                         escalated=[c[0] for c in cases if c[3]], cases=results)  # fmt: skip


def generic_and_site(site_missed: int, site_calls: int, generic_missed: int = 0):
    generic = [(f"g{i}", True, i >= generic_missed, False) for i in range(33)]
    generic += [(f"gs{i}", False, False, True) for i in range(10)]
    site = [(f"s{i}", True, i >= site_missed, True) for i in range(6)]
    site += [(f"ss{i}", False, False, i < site_calls) for i in range(14)]
    return generic + site


SITES = {f"{p}{i}": "site pool" for p in ("s", "ss") for i in range(14)}


def test_two_more_generic_misses_are_noise_when_the_site_gains():
    active = report(1, generic_and_site(0, 14))
    candidate = report(2, generic_and_site(0, 2, generic_missed=2))  # 0.970 -> 0.909 style
    verdict = gate.compare(candidate, active, 0.95, sites=SITES)
    assert verdict.passed, verdict.reasons
    assert (
        verdict.groups["generic"]["p"] == 0.25 and "calls on site pool" in verdict.groups["gains"]
    )


def test_a_release_that_loses_the_sites_hazards_is_refused_on_that_rule():
    active = report(1, generic_and_site(0, 14))
    candidate = report(2, generic_and_site(4, 0))  # 2 of 6 pool hazards caught
    verdict = gate.compare(candidate, active, 0.95, sites=SITES)
    assert not verdict.passed
    assert verdict.reasons == [
        "system safety recall on the site pool hazards 0.333 (2/6) is below the target 0.95 "
        "beyond doubt (upper 95% bound 0.729); missed: s0, s1, s2, s3"
    ]


def test_one_miss_among_a_sites_two_frozen_hazards_is_not_beyond_doubt():
    two = {f"{p}{i}": "site pool" for p in ("s", "ss") for i in range(2)}
    cases = [(f"g{i}", True, True, False) for i in range(33)]
    cases += [(f"gs{i}", False, False, True) for i in range(10)]
    active = report(1, cases + [("s0", True, True, True), ("s1", True, True, True)]
                    + [("ss0", False, False, True), ("ss1", False, False, True)])  # fmt: skip
    candidate = report(2, cases + [("s0", True, False, False), ("s1", True, True, True)]
                       + [("ss0", False, False, False), ("ss1", False, False, False)])  # fmt: skip
    verdict = gate.compare(candidate, active, 0.95, sites=two)
    assert verdict.passed, verdict.reasons  # 1 of 2: the bound at 95% is 0.975
    assert verdict.groups["site pool"]["bound"] > 0.95


def test_the_generic_floor_holds_whatever_the_site_gains():
    active = report(1, generic_and_site(0, 14))
    candidate = report(2, generic_and_site(0, 0, generic_missed=8))
    verdict = gate.compare(candidate, active, 0.95, sites=SITES)
    assert [r.split(" 0.")[0] for r in verdict.reasons] == [
        "system safety recall on the generic hazards",
        "system safety recall on the generic hazards fell against the active release v1 beyond "
        "noise: 8 hazard(s) it missed that v1 caught, 0 the other way (exact McNemar p",
    ]


def test_mcnemar_is_the_exact_binomial_tail():
    assert gate.mcnemar_worse(0, 3) == 1.0
    assert gate.mcnemar_worse(1, 0) == 0.5
    assert gate.mcnemar_worse(5, 0) == 1 / 32
    assert abs(gate.mcnemar_worse(6, 2) - 37 / 256) < 1e-12


def test_a_candidate_not_worse_ships_and_one_dearer_beyond_noise_is_refused():
    active = report(1, generic_and_site(0, 4))
    # the same outcomes plus two more site escalations: noise (McNemar p 0.25), and no gain
    same = gate.compare(report(2, generic_and_site(0, 6)), active, 0.95, sites=SITES)
    assert same.passed and same.groups["gains"] == []
    assert same.groups["calls on site pool"] == {"worse": 2, "better": 0, "p": 0.25}
    strict = gate.compare(report(2, generic_and_site(0, 6)), active, 0.95, sites=SITES,
                          must_gain=True)  # fmt: skip
    assert [r.split(":")[0] for r in strict.reasons] == ["no gain over the active release"]
    # ten more escalations on the site's share with none fewer are not noise
    dearer = gate.compare(report(2, generic_and_site(0, 14)), active, 0.95, sites=SITES)
    assert dearer.reasons == [
        "teacher calls rose against the active release v1 beyond noise: 10 case(s) it "
        "escalates that v1 does not, 0 the other way (exact McNemar p 0.001 < 0.05)",
        "teacher calls rose on site pool's share against the active release v1 beyond noise: "
        "10 case(s) it escalates that v1 does not, 0 the other way (exact McNemar p 0.001 < 0.05)",
    ]


def test_the_paired_test_on_calls_runs_on_a_cached_active_release(tmp_path):
    """The registry's cached report keeps the escalated ids (not the cases)."""
    from teacher.release.registry import ReleaseRegistry

    registry = ReleaseRegistry(tmp_path)
    active = report(1, generic_and_site(0, 4))
    registry.cache_eval(1, "k" * 24, active)
    cached = registry.cached_eval(1, "k" * 24)
    assert cached.cases == [] and sorted(cached.escalated) == sorted(active.escalated)
    dearer = gate.compare(report(2, generic_and_site(0, 14)), cached, 0.95, sites=SITES)
    assert dearer.groups["calls"] == {"worse": 10, "better": 0, "p": 0.001}
    assert not dearer.passed
