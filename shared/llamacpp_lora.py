"""A release's LoRA adapters on a llama.cpp model: each loaded once (a GGUF adapter, see
``shared.gguf_adapter``) and switched on a live context with ``llama_set_adapters_lora``,
so the base weights are never reloaded.

``LoraSlots`` keeps the loaded adapters and which one is active; the backend that owns the
context (``shared.llamacpp_backend``) holds the lock and drops its cached keys and values
whenever ``apply`` changes what the context computes with.
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path
from typing import Any

from shared.errors import ModelError

logger = logging.getLogger(__name__)


class LoraSlots:
    def __init__(self, llama_cpp: Any, model: Any):
        self._ll = llama_cpp
        self._model = model
        self._loaded: dict[str, tuple[Any, Path]] = {}  # name -> (llama adapter, gguf)
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        return sorted(self._loaded)

    def load(self, name: str, gguf: Path, ctx: Any) -> None:
        """Load the GGUF adapter under ``name`` (not activated; replacing a loaded one of
        that name, on ``ctx`` too if it is active). A failure keeps what was loaded."""
        t0 = time.perf_counter()
        adapter = self._ll.llama_adapter_lora_init(self._model, str(gguf).encode())
        if not adapter:
            raise ModelError(f"adapter {name!r}: llama.cpp could not load {gguf}")
        old = self._loaded.get(name)
        self._loaded[name] = (adapter, gguf)
        if old is not None:
            if self.active == name:
                self.apply(ctx)
            self._ll.llama_adapter_lora_free(old[0])
        logger.info("loaded adapter %s from %s in %.2f s", name, gguf, time.perf_counter() - t0)

    def select(self, name: str | None) -> bool:
        """Make ``name`` the active adapter (None: the base model); whether it changed (the
        caller then applies it)."""
        if name is not None and name not in self._loaded:
            raise ModelError(f"adapter {name!r} is not loaded (loaded: {self.names})")
        changed, self.active = name != self.active, name
        return changed

    def unload(self, name: str, ctx: Any) -> bool:
        """Free adapter ``name`` (taken off ``ctx`` first if active); whether it was active."""
        if name not in self._loaded:
            raise ModelError(f"adapter {name!r} is not loaded (loaded: {self.names})")
        adapter, _ = self._loaded.pop(name)
        was_active = self.active == name
        if was_active:
            self.active = None
            self.apply(ctx)
        self._ll.llama_adapter_lora_free(adapter)
        return was_active

    def apply(self, ctx: Any) -> None:
        """Put the active adapter on ``ctx`` (none: the base model). Refused by llama.cpp,
        the context is left on the base model and ModelError says so."""
        if self.active is None:
            rc = self._ll.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            arr = (self._ll.llama_adapter_lora_p_ctypes * 1)(self._loaded[self.active][0])
            scales = (ctypes.c_float * 1)(1.0)
            rc = self._ll.llama_set_adapters_lora(ctx, arr, 1, scales)
        if rc != 0:
            self.active = None
            self._ll.llama_set_adapters_lora(ctx, None, 0, None)
            raise ModelError(f"llama.cpp refused the adapter (llama_set_adapters_lora = {rc})")

    def close(self) -> None:
        for adapter, _ in self._loaded.values():
            self._ll.llama_adapter_lora_free(adapter)
        self._loaded.clear()
        self.active = None
