"""Versioned registries of skills and adapters on the teacher box.

    <home>/<kind>/v<N>/        one folder per version: its files + meta.json
    <home>/<kind>/active       the active version number (what edges should run)

Versions are written to a temporary folder and renamed into place, so a version
either exists whole or not at all. The server pushes the active version to edges;
``rollback`` just moves the pointer. It knows nothing about what the files mean.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import StoreError
from shared.messages import FileEntry, file_entry


@dataclass(frozen=True)
class Version:
    number: int
    path: Path
    meta: dict

    def files(self) -> list[tuple[FileEntry, bytes]]:
        """The version's payload files (not meta.json), sorted by name, with entries."""
        out = []
        for p in sorted(self.path.iterdir()):
            if p.is_file() and p.name != "meta.json":
                data = p.read_bytes()
                out.append((file_entry(p.name, data), data))
        return out


class Registry:
    def __init__(self, home: Path, kind: str):
        if kind not in ("skills", "adapters"):
            raise ValueError(kind)
        self.kind = kind
        self.root = Path(home) / kind
        self.root.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[Version]:
        out = []
        for p in self.root.glob("v*"):
            if p.is_dir() and p.name[1:].isdigit() and (p / "meta.json").is_file():
                out.append(Version(int(p.name[1:]), p, json.loads((p / "meta.json").read_text())))
        return sorted(out, key=lambda v: v.number)

    def get(self, number: int) -> Version:
        for v in self.versions():
            if v.number == number:
                return v
        raise StoreError(f"no {self.kind[:-1]} version {number} in {self.root}")

    def add(self, files: dict[str, bytes], meta: dict) -> Version:
        """Store a new version (next number); it is not active until ``activate``."""
        number = max((v.number for v in self.versions()), default=0) + 1
        tmp = self.root / f".v{number}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        meta = {**meta, "version": number, "created_at": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.rename(self.root / f"v{number}")
        return self.get(number)

    def active(self) -> Version | None:
        pointer = self.root / "active"
        if not pointer.is_file():
            return None
        return self.get(int(pointer.read_text().strip()))

    def activate(self, number: int) -> Version:
        version = self.get(number)
        tmp = self.root / "active.tmp"
        tmp.write_text(f"{number}\n")
        tmp.replace(self.root / "active")
        return version
