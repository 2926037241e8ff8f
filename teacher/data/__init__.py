"""Data: what the teacher knows, before anything is trained or released.

``store`` (the SQLite store of escalated cases, reviews, corrections, edge counts),
``dataset`` (reviewed cases → training pairs, deduplicated, PII-redacted, the frozen
split), ``evalset`` (the three-way split upskill chooses on), ``traffic`` (what edges
settled on their own), ``redact`` (PII out of training data), ``synth`` (teacher-written
inputs to top up thin traffic).

It knows nothing about sockets, models being trained, releases or edges.
"""
