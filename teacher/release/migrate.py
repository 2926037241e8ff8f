"""Once, at first start: an old teacher home's skill and adapter registries become a release.

Before 0.2.0 a teacher pushed a skill and a LoRA adapter separately, from

    <home>/skills/v<N>/skill.json      + <home>/skills/active
    <home>/adapters/v<N>/adapter_*     + <home>/adapters/active

Only releases travel now. ``old_active`` reads what those registries had active, so that
``ReleaseRegistry.ensure`` can adopt it as one release (no head: it was never fit on
that prompt) and edges keep running what they ran. The old folders are left in place,
read once, never written.

It knows nothing about sockets or models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.release import SKILL_FILE, read_active, read_adapter
from shared.skill import Skill, skill_from_bytes


@dataclass(frozen=True)
class OldActive:
    skill: Skill | None
    skill_version: int | None
    adapter: dict[str, bytes] | None
    adapter_version: int | None

    def describe(self) -> str:
        parts = [f"skills/v{self.skill_version}"] if self.skill is not None else []
        parts += [f"adapters/v{self.adapter_version}"] if self.adapter is not None else []
        return " and ".join(parts)


def old_active(home: Path) -> OldActive | None:
    """What an old home's skill and adapter registries had active, or None (none there)."""
    home = Path(home)
    skill = adapter = None
    skill_version = read_active(home / "skills")
    if skill_version is not None:
        path = home / "skills" / f"v{skill_version}" / SKILL_FILE
        skill = skill_from_bytes(path.read_bytes(), str(path))
    adapter_version = read_active(home / "adapters")
    if adapter_version is not None:
        folder = home / "adapters" / f"v{adapter_version}"
        adapter = read_adapter(folder)
    if skill is None and adapter is None:
        return None
    return OldActive(skill, skill_version, adapter, adapter_version)
