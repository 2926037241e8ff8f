"""Releases: score, build, gate, store, export what edges run.

``harness`` (a release answers labelled cases exactly as an edge would, through
``shared.student`` and ``shared.policy``), ``head_fit`` (safety head and certified
thresholds), ``gate`` (does a candidate beat the active release?), ``build`` (one release
build: head, thresholds, canaries, the gate), ``registry`` (the versioned releases and
the active pointer), ``migrate`` (an old home's skill and adapter become a release),
``export`` (a release's LoRA for Ollama and llama.cpp), ``cli`` and ``evaluate`` (the
``releases`` and ``eval`` commands).

It knows data (``teacher.data``), not sockets, reviewers or how candidates are found.
"""
