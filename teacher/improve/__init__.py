"""Improving the prompt: upskill finds a better skill without training.

``candidates`` (bootstrapped demonstrations, instruction variants, the writer's
prompts), ``scoring`` (a skill's answers on labelled cases, evaluated), ``upskill`` (the
recipe: rounds of candidates, the held-out comparison, the winner to the release build),
``report`` (the run as a table, JSON and a chart).

What edges get is decided by the release build and its gate (``teacher.release``).
"""
