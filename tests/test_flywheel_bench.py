"""``bench/flywheel.py``'s target table: which runs meet issue 21's target, a site whose runs
came from two student builds is flagged (they are not one experiment), and the table ends
with the count over every site."""

from __future__ import annotations

from bench.flywheel import meets, show_targets, targets

BUILD = {"llama_cpp": "0.3.36", "cpu_features": "CPU : AVX2 = 1 |", "library": "21559879cc10db10"}


def _run(
    name, last, start, min_recall=1.0, engine=BUILD, scenes="bench/data/farm_site/scenes.jsonl"
):
    return {
        "report": f"bench/results/flywheel/{name}/report.json",
        "command": f"gemma-edge demo --seed 0 --scenes /x/{scenes}",
        "calls": [25.0, last],
        "start_calls": [25.0, start],
        "last_ratio": round(last / start, 3),
        "min_recall": min_recall,
        "engine": engine,
    }


def test_the_target_needs_all_three_at_once():
    assert meets(_run("a", 12.0, 24.0))  # at most 12 and exactly half
    assert not meets(_run("b", 12.0, 23.9))  # more than half of v0's
    assert not meets(_run("c", 13.3, 30.0))  # under half, but above 12
    assert not meets(_run("d", 5.0, 25.0, min_recall=0.94))  # a round under 0.95 recall


def test_a_site_whose_runs_mix_student_builds_says_so():
    rows = targets([_run("farm-seed0", 10.0, 26.7), _run("farm-seed1", 13.3, 25.0, engine=None),
                    _run("quay-seed0", 6.7, 25.0, scenes="bench/data/quay_site/scenes.jsonl")])  # fmt: skip
    farm, quay = rows
    assert (farm["site"], farm["meets"], farm["last"]) == ("farm", 1, [10.0, 13.3])
    assert farm["builds"] == ["llama.cpp 0.3.36 library 21559879cc10db10", "not recorded"]
    assert (quay["site"], quay["meets"], quay["builds"]) == ("quay", 1, [farm["builds"][0]])


def test_the_target_table_ends_with_the_count_over_every_site():
    rows = targets([_run("farm-seed0", 10.0, 26.7), _run("farm-seed1", 16.7, 26.7),
                    _run("quay-seed0", 6.7, 25.0, scenes="bench/data/quay_site/scenes.jsonl")])  # fmt: skip
    table = show_targets(rows)
    assert "| farm | 2 | 10.0 / 16.7 |" in table
    assert table.splitlines()[-1] == (
        "2 of 3 runs meet the target; the loop's effect in the last round: "
        "median 0.38x, 0.27x to 0.62x"
    )
