"""What llama.cpp's C side needs from Python: the eval callback that copies earlier
layers' hidden states out of a decode, llama.cpp's log lines routed to Python logging, and
the fingerprint of the native build that computes the numbers.

    taps = LayerTaps(llama_cpp, n_embd)      # context params: cb_eval = taps.callback
    ctx = context_with(llama_cpp, llm, taps.callback, what)   # a context that carries it
    row = taps.read((9, 18), 18, lambda: llama_decode(...), what)   # one decode's states
    engine_build()          # the binding's version, CPU features and library hash

llama-cpp-python binds llama.h, not ggml.h: the four ggml tensor functions the callback
needs come from its own ``libggml-base``. Without that library only the final-norm state
is readable (``LayerTaps.available`` is False). It knows nothing about prompts or heads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import BackendError, ModelError

logger = logging.getLogger(__name__)


class _GgmlTensors:
    """The four ggml functions the eval callback needs, from llama-cpp-python's own
    ``libggml-base`` (llama_cpp binds llama.h, not ggml.h)."""

    def __init__(self, lib: ctypes.CDLL):
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nelements.restype = ctypes.c_int64
        lib.ggml_nelements.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t
        ]  # fmt: skip
        self.get_name = lib.ggml_get_name
        self.nelements = lib.ggml_nelements
        self.nbytes = lib.ggml_nbytes
        self.tensor_get = lib.ggml_backend_tensor_get


def _lib_folder(llama_cpp: Any) -> Path:
    """Where llama-cpp-python keeps its own native libraries."""
    return Path(llama_cpp.__file__).parent / "lib"


def _shipped(llama_cpp: Any, stem: str) -> list[Path]:
    """llama-cpp-python's own copies of ggml library ``stem`` (``lib<stem>.so``/``.dylib``,
    ``<stem>.dll``)."""
    folder = _lib_folder(llama_cpp)
    return sorted(folder.glob(f"lib{stem}.*")) + sorted(folder.glob(f"{stem}.*"))


def engine_build() -> dict[str, str]:
    """What decides llama.cpp's numbers on this machine, for a benchmark to record beside
    them: the binding's version, the CPU features its library was compiled with
    (``llama_print_system_info``) and a hash of that CPU library. The same GGUF and prompt
    can give another sentence on another build (the order of float sums differs), so runs
    from two builds are not one experiment."""
    import llama_cpp

    cpu = _shipped(llama_cpp, "ggml-cpu")
    digest = hashlib.sha256(cpu[0].read_bytes()).hexdigest()[:16] if cpu else "unknown"
    features = llama_cpp.llama_print_system_info().decode().strip()
    return {"llama_cpp": llama_cpp.__version__, "cpu_features": features, "library": digest}


def _ggml_tensor_api(llama_cpp: Any) -> _GgmlTensors | None:
    """ggml's tensor functions, or None (then only the final-norm state is readable)."""
    for path in _shipped(llama_cpp, "ggml-base"):
        try:
            return _GgmlTensors(ctypes.CDLL(str(path)))
        except (OSError, AttributeError):
            continue
    folder = _lib_folder(llama_cpp)
    logger.warning("no ggml library next to llama_cpp in %s: only the final-norm state", folder)
    return None


class LayerTaps:
    """llama.cpp's eval callback: asked about every graph node (is it wanted?), then called
    once each wanted one is computed, to copy out the row of the batch's last token. Never
    raises into C: a problem is kept and returned by ``collect``. Block ``i - 1``'s output
    (``l_out-{i-1}``) is hidden-state index ``i`` in the embedded backend's numbering; the
    final-norm state (``result_norm``, computed for the output tokens only) is ``n_layer``."""

    def __init__(self, llama_cpp: Any, size: int):
        self.size = size
        self._api = _ggml_tensor_api(llama_cpp)
        self._names: dict[bytes, int] = {}  # tensor name -> layer, for this decode
        self._states: dict[int, np.ndarray] = {}
        self._error: str | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    @property
    def available(self) -> bool:
        return self._api is not None

    def want(self, layers: list[int], final: int | None = None) -> None:
        """Copy out ``layers`` (earlier ones) and, with ``final`` (n_layer), the final-norm
        state under that index, at the next decode."""
        self._names = {f"l_out-{i - 1}".encode(): i for i in layers}
        if final is not None:
            self._names[b"result_norm"] = final
        self._states, self._error = {}, None

    def collect(self) -> tuple[dict[int, np.ndarray], str | None]:
        """The states copied out since ``want`` and the problem, if any; wants nothing more."""
        self._names = {}
        return self._states, self._error

    def read(
        self,
        layers: tuple[int, ...],
        final: int,
        decode: Callable[[], dict[int, np.ndarray] | None],
        what: str,
        tap_final: bool = True,
    ) -> list[float]:
        """The hidden states of ``layers`` at the last token of one decode, concatenated in
        order. ``decode`` runs it with the taps armed for the earlier layers (and, with
        ``tap_final``, the final-norm state ``final``) and returns any states it read itself
        (the final-norm row from llama.cpp's embeddings), or None. Raises BackendError naming
        ``what`` (the backend) where a layer was not read or reading one failed."""
        self.want(
            [i for i in layers if i < final], final if tap_final and final in layers else None
        )
        try:
            states = decode() or {}
        finally:
            taps, error = self.collect()
        if error:
            raise BackendError(f"{what}: {error}")
        states = {**states, **taps}
        missing = [i for i in layers if i not in states]
        if missing:
            raise BackendError(f"{what}: llama.cpp's graph gave no state for layers {missing}")
        return np.concatenate([states[i] for i in layers]).astype(np.float64).tolist()

    def _on_tensor(self, tensor: int, ask: bool, user_data: Any) -> bool:
        names = self._names
        if not names:
            return not ask  # nothing wanted; and never stop the graph
        try:
            name = self._api.get_name(tensor)
            if ask:
                return name in names
            n = self._api.nelements(tensor)
            if n % self.size or self._api.nbytes(tensor) != 4 * n:
                self._error = f"{name.decode()} has {n} values, not rows of {self.size} float32"
                return True
            out = np.empty(self.size, dtype=np.float32)  # the last row: the last token's
            self._api.tensor_get(tensor, out.ctypes.data, 4 * (n - self.size), 4 * self.size)
            self._states[names[name]] = out
        except Exception as exc:  # noqa: BLE001 - kept for collect, see above
            self._error = f"reading a hidden layer failed: {exc}"
        return True


def context_with(llama_cpp: Any, llm: Any, callback: Any | None, what: str) -> Any:
    """A new context for ``llm`` (a ``llama_cpp.Llama``) with its context parameters and
    ``callback`` as the eval callback (None: none). The caller frees the old one."""
    params = llama_cpp.llama_context_params()
    ctypes.pointer(params)[0] = llm.context_params
    params.cb_eval = (
        callback if callback is not None else llama_cpp.ggml_backend_sched_eval_callback()
    )
    params.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    if not ctx:
        raise ModelError(f"{what}: llama.cpp could not make a context")
    return ctx


_LOG_CALLBACK: Any = None  # kept alive: llama.cpp holds a pointer to it


def route_logs(llama_cpp: Any) -> None:
    """llama.cpp's own log lines go to Python logging ("llama.cpp"), not to stderr."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    log = logging.getLogger("llama.cpp")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            log.log(logging.WARNING if level == 4 else logging.DEBUG, "%s", line)

    _LOG_CALLBACK = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
