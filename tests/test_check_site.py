"""``bench/data/check_site.py``'s repeat search: an input repeats another at bigram Jaccard
0.5 or more, and pairs that share no bigram are never reported."""

from __future__ import annotations

from bench.data.check_site import bigrams, repeats


def test_repeats_finds_the_near_copy_and_only_it():
    mine = [bigrams("A man is painting a fence with a brush."), bigrams("Snow on a quiet street.")]
    others = [
        bigrams("A cat is asleep on a windowsill."),
        bigrams("A man is painting a garden fence with a brush."),  # Jaccard 0.7 with mine[0]
        bigrams("A man is carrying a ladder."),  # shares "a man", "man is": 0.17
    ]
    assert repeats(mine, others) == [(0, 1)]
    assert repeats(mine, []) == []
