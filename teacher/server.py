"""``gemma-teacher server``: not built yet (see the open issues)."""

from __future__ import annotations

from shared.errors import GemmaEdgeError


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise GemmaEdgeError("gemma-teacher server is not built yet")
