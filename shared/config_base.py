"""What every configuration model shares: strict pydantic models, the default home, and
loading a YAML file with errors that name the key path, the bad value and the reason.

It knows nothing about any setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError

DEFAULT_HOME = Path.home() / ".cache" / "gemma-edge"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- loading
M = TypeVar("M", bound=BaseModel)


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def validate_config(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate a parsed YAML document; raise ConfigError with (path, value, reason)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("<top>", data, "the file must hold a mapping of keys")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            path = ".".join(str(p) for p in loc) or "<top>"
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            else:
                reason = err["msg"].removeprefix("Value error, ")
            value = err.get("input") if err["type"] != "missing" else None
            if err["type"] not in ("extra_forbidden", "missing"):
                value = _value_at(data, loc) if loc else value
            problems.append((path, value, reason))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path | None, model: type[M]) -> M:
    """Read a YAML file (or nothing: all defaults) into ``model``."""
    if path is None:
        return model()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("<file>", str(path), exc.strerror or str(exc))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", None, f"not valid YAML: {exc}")]) from None
    return validate_config(data, model, str(path))
