"""The one exception tree of gemma-edge.

Every error the project raises on purpose is a ``GemmaEdgeError``; callers catch
the narrowest class that they can act on::

    GemmaEdgeError
    ├── ConfigError            a YAML file or option is wrong (key path, value, reason)
    ├── MessageError           a wire message is malformed, oversized or of an unknown type/version
    ├── ModelError             model weights could not be found, converted or loaded
    │   └── ModelCacheError    the safetensors cache is corrupt or partial (it is rebuilt)
    ├── BackendError           a backend failed to generate
    │   ├── BackendUnavailable the backend's server cannot be reached (Ollama down, timeout)
    │   └── ModelNotFound      the server is up but does not have the model
    ├── SourceError            an input source cannot be opened or read (missing webcam, bad file)
    ├── LinkError              the edge↔teacher link failed (keys, sockets)
    ├── PushRejected           a skill or adapter push failed verification; the old one stays
    ├── StoreError             the teacher store or the edge outbox failed
    └── TrainingError          a training or upskill run could not complete

Nothing here knows about sockets, models or files: it only names what went wrong.
"""

from __future__ import annotations

from typing import Any


class GemmaEdgeError(Exception):
    """Base class of every error gemma-edge raises on purpose."""


class ConfigError(GemmaEdgeError):
    """Configuration is wrong. ``problems`` holds (key path, bad value, reason) triples."""

    def __init__(self, source: str, problems: list[tuple[str, Any, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} configuration error(s)"]
        lines += [f"  {path}: {value!r}: {reason}" for path, value, reason in problems]
        super().__init__("\n".join(lines))

    def one_line(self) -> str:
        """Every problem on one line (what a start-up error prints)."""
        each = "; ".join(
            reason if path == "<file>" else f"{path}: {value!r}: {reason}"
            for path, value, reason in self.problems
        )
        if len(self.problems) == 1:
            return f"{self.source}: {each}"
        return f"{self.source}: {len(self.problems)} configuration errors: {each}"


class MessageError(GemmaEdgeError):
    """A wire message is malformed, too large, or of an unknown type or schema version."""


class ModelError(GemmaEdgeError):
    """Model weights could not be located, converted or loaded."""


class ModelCacheError(ModelError):
    """The converted-weights cache is corrupt or incomplete."""


class BackendError(GemmaEdgeError):
    """A model backend failed to produce an answer."""


class BackendUnavailable(BackendError):
    """The backend's server cannot be reached or timed out."""


class ModelNotFound(BackendError):
    """The backend's server is reachable but does not have the requested model."""


class SourceError(GemmaEdgeError):
    """An input source cannot be opened or read."""


class LinkError(GemmaEdgeError):
    """The edge↔teacher link failed (keys, sockets, protocol)."""


class PushRejected(GemmaEdgeError):
    """A pushed skill or adapter failed verification; the active version stays."""


class StoreError(GemmaEdgeError):
    """The teacher store or the edge outbox failed."""


class TrainingError(GemmaEdgeError):
    """A training, evaluation or upskill run could not complete."""
