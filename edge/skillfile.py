"""The active skill of the daemon: loaded from a versioned file, hot-reloaded on change.

``ActiveSkill.current(now)`` returns the skill to use for the next input. At most every
``poll_s`` seconds it stats the skill file; when its size, mtime or inode changed it
re-reads it. A file that no longer parses is logged once and the old skill stays
(a half-written file never replaces a good skill). ``push(skill)`` installs a skill
from elsewhere (the teacher link) from any thread; it takes effect on the next input.

This module knows nothing about models or the link; it hands out ``Skill`` objects.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from shared.errors import ConfigError
from shared.skill import Skill, load_skill

logger = logging.getLogger(__name__)


class ActiveSkill:
    def __init__(self, path: Path | None, poll_s: float = 1.0):
        self.path = Path(path) if path is not None else None
        self.poll_s = poll_s
        self.reloads = 0
        self._lock = threading.Lock()
        self._skill = load_skill(self.path)  # ConfigError at start is fatal, as it should be
        self._stamp = self._stat()
        self._checked = float("-inf")
        self._bad_stamp: tuple | None = None
        logger.info("skill %s v%d loaded", self._skill.name, self._skill.version)

    def _stat(self) -> tuple | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def current(self, now: float) -> Skill:
        if self.path is not None and now - self._checked >= self.poll_s:
            self._checked = now
            self._maybe_reload()
        with self._lock:
            return self._skill

    def _maybe_reload(self) -> None:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or stamp == self._bad_stamp:
            return
        try:
            skill = load_skill(self.path)
        except ConfigError as exc:
            self._bad_stamp = stamp
            logger.error("skill file changed but is not valid; keeping v%d:\n%s", self.version, exc)
            return
        with self._lock:
            self._skill = skill
        self._stamp, self._bad_stamp = stamp, None
        self.reloads += 1
        logger.warning("skill reloaded from %s: %s v%d", self.path, skill.name, skill.version)

    def push(self, skill: Skill) -> None:
        with self._lock:
            self._skill = skill
        self.reloads += 1
        logger.warning("skill pushed: %s v%d", skill.name, skill.version)

    @property
    def version(self) -> int:
        with self._lock:
            return self._skill.version
