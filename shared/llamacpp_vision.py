"""Frames for a multimodal GGUF on the llama.cpp backend (``model.llamacpp.mmproj``).

    vision = Vision(backend, Path("mmproj-model-f16.gguf"), threads=2)  # model loaded
    ids = vision.prompt(request)      # text token ids, and one key (< 0) per image position
    vision.eval(ids[kept:-1], False)  # text runs through the backend, the image through mtmd

llama.cpp's mtmd (``libmtmd``, bound in llama-cpp-python as ``llama_cpp.mtmd_cpp``) decodes
the JPEG, runs the projector (SigLIP + Gemma's projection for Gemma 3) and puts the image
embeddings in the backend's own live context, between the prompt's text tokens. The prompt
is the text path's (skill instructions, demonstrations, ``Scene: <input>``, ``Answer:``)
with mtmd's media marker at the start of the input, where mtmd adds the model's own
image-begin and image-end tokens (``<start_of_image>`` ... ``<end_of_image>`` on Gemma 3).
The marker is taken out of any text first, so text can never ask for an image.

The prompt ends in text, so the backend's last-token pass (logits, the final-norm state,
earlier layers through the eval callback) is the same one a text prompt gets: the head's
features come from the pass that answers, with the image in its keys and values.

Prefix reuse stays exact: each image position gets a key made of the JPEG's SHA-256 and the
position within the image, so the backend's list of cached tokens compares an image like a
token. The same frame again (``answer: when_needed`` runs the prompt, then the sentence)
reuses it; a text request after it keeps only the text they share (``Scene:``) and
evaluates the rest.

It knows mtmd's API, the marker and positions (one per image token, as on Gemma's
projectors; M-RoPE projectors are refused). The prompt's words are ``shared.skill``'s, as on
the text path; mtmd sizes the frame for the projector. It knows nothing of heads or policy
and runs no text itself: the backend evaluates every text token and owns the context and
the cache. Tested on a tiny random Gemma 3 (``tests/shared/tiny_gemma3_vision.py``), not on
real weights: what an image adds to a real model's answers is not measured here.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import struct
from pathlib import Path
from typing import Any

from shared.backend import GenerateRequest
from shared.errors import BackendError, ModelError
from shared.skill import render_input, render_prefix

logger = logging.getLogger(__name__)

_IMAGE = 1  # MTMD_INPUT_CHUNK_TYPE_IMAGE
_POSITION_BITS = 20  # a key is -1 - (image tag << 20 | position in the image)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalars


def gguf_keys(path: Path, wanted: set[str]) -> dict[str, Any]:
    """The string and bool values of ``wanted`` keys in a GGUF header (ValueError: not a
    GGUF). Reads the header only, stopping once all are found: fast on any file."""
    found: dict[str, Any] = {}
    with open(path, "rb") as f:

        def read(fmt: str) -> tuple:
            data = f.read(struct.calcsize(fmt))
            if len(data) != struct.calcsize(fmt):
                raise ValueError("the file ends inside its GGUF header")
            return struct.unpack(fmt, data)

        def text() -> str:
            (n,) = read("<Q")
            if n > 1 << 16:
                raise ValueError(f"a {n}-byte key or value in the header")
            return f.read(n).decode("utf-8")

        def skip(kind: int) -> None:
            if kind == 8:
                f.seek(read("<Q")[0], 1)
            elif kind == 9:
                item, n = read("<IQ")
                if item in _SIZES:
                    f.seek(n * _SIZES[item], 1)
                else:
                    for _ in range(n):
                        skip(item)
            elif kind in _SIZES:
                f.seek(_SIZES[kind], 1)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic")
        _version, _tensors, n_kv = read("<IQQ")
        for _ in range(n_kv):
            key = text()
            (kind,) = read("<I")
            if key in wanted and kind in (7, 8):
                found[key] = text() if kind == 8 else read("<?")[0]
                if len(found) == len(wanted):
                    break
            else:
                skip(kind)
    return found


class _LastProblem(logging.Handler):
    """Keeps the last warning or error llama.cpp logged (its reason for a failed load)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.line = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.line = record.getMessage().strip()


class Vision:
    """mtmd on a ``LlamaCppBackend``'s model: a request's image as chunks of the prompt,
    evaluated on the backend's context. Every method runs under the backend's lock."""

    def __init__(self, backend: Any, mmproj: Path, threads: int):
        from llama_cpp import mtmd_cpp

        from shared import llamacpp_native

        self._m = mtmd_cpp
        self._backend = backend
        self._ctx: Any = None
        self._chunks: Any = None  # the mtmd chunks of the last image prompt
        self._images: dict[int, tuple[Any, list[int]]] = {}  # first key -> (chunk, keys)
        path = Path(mmproj).expanduser()
        where = f"model.llamacpp.mmproj: {path}"
        if not path.is_file():
            raise ModelError(f"{where}: no such file")
        try:
            keys = gguf_keys(path, {"general.type", "clip.has_vision_encoder"})
        except (OSError, ValueError) as exc:
            raise ModelError(f"{where}: not a GGUF file ({exc})") from None
        if keys.get("general.type") != "mmproj":
            raise ModelError(
                f"{where}: not a multimodal projector (its general.type is "
                f"{keys.get('general.type')!r}, not 'mmproj'): give the mmproj GGUF that "
                "belongs to model.llamacpp.gguf_path"
            )
        if not keys.get("clip.has_vision_encoder"):
            raise ModelError(f"{where}: this projector has no vision encoder (audio only?)")
        callback = llamacpp_native._LOG_CALLBACK  # set by route_logs when the backend started
        if callback is not None:
            mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
            mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.n_threads = threads
        problem = _LastProblem()
        logging.getLogger("llama.cpp").addHandler(problem)
        try:
            ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), backend._model, params)
        finally:
            logging.getLogger("llama.cpp").removeHandler(problem)
        if not ctx:
            reason = problem.line.splitlines()[0] if problem.line else "see llama.cpp's log"
            raise ModelError(
                f"{where}: llama.cpp could not put this projector on "
                f"{backend.weights.path.name} ({reason})"
            )
        self._ctx = ctx
        if not mtmd_cpp.mtmd_support_vision(ctx) or mtmd_cpp.mtmd_decode_use_mrope(ctx):
            self.close()
            raise ModelError(
                f"{where}: llama.cpp reads no images with it here (no vision, or M-RoPE "
                "positions, which this backend does not track)"
            )
        self.marker = mtmd_cpp.mtmd_default_marker().decode()
        logger.info("llama.cpp reads frames through %s", path.name)

    def close(self) -> None:
        self._free_chunks()
        if self._ctx:
            self._m.mtmd_free(self._ctx)
            self._ctx = None

    # ------------------------------------------------------------ the prompt
    def prompt(self, request: GenerateRequest) -> list[int]:
        """The text path's prompt with ``request.image`` at the start of the input: text
        token ids and, for each image position, a key (< 0) naming the image and position."""
        m, marker = self._m, self.marker
        prefix = render_prefix(request.system, request.demos).replace(marker, " ")
        text = (prefix + render_input(f"{marker} {request.input.replace(marker, ' ')}")).encode()
        data = bytes(request.image or b"")
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = m.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(data), False)
        if not bitmap:
            raise BackendError(f"{self._backend.name}: the frame is not an image llama.cpp reads")
        self._free_chunks()
        self._chunks = m.mtmd_input_chunks_init()
        try:
            part = m.mtmd_input_text(text, len(text), True, False)  # BOS; no special tokens
            bitmaps = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = m.mtmd_tokenize(self._ctx, self._chunks, ctypes.byref(part), bitmaps, 1)
        finally:
            m.mtmd_bitmap_free(bitmap)
        if rc != 0:
            raise BackendError(f"{self._backend.name}: mtmd_tokenize returned {rc}")
        tag = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
        ids: list[int] = []
        for i in range(m.mtmd_input_chunks_size(self._chunks)):
            chunk = m.mtmd_input_chunks_get(self._chunks, i)
            if m.mtmd_input_chunk_get_type(chunk) != _IMAGE:
                n = ctypes.c_size_t(0)
                tokens = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                ids.extend(int(tokens[k]) for k in range(n.value))
                continue
            n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
            n_tokens = int(m.mtmd_input_chunk_get_n_tokens(chunk))
            n_batch = self._backend.config.n_batch
            if n_tokens > n_batch and m.mtmd_decode_use_non_causal(self._ctx, chunk):
                raise BackendError(  # its tokens attend to each other: one batch
                    f"{self._backend.name}: a frame is {n_tokens} tokens, evaluated in one "
                    f"batch: model.llamacpp.n_batch ({n_batch}) is too small"
                )
            keys = [-1 - ((tag << _POSITION_BITS) | k) for k in range(n_pos)]
            self._images[keys[0]] = (chunk, keys)
            ids.extend(keys)
        return ids

    # ------------------------------------------------------------ evaluation
    def eval(self, tokens: list[int], output_last: bool) -> None:
        """Append ``tokens`` to sequence 0: text runs through the backend's ``_eval``, each
        image through mtmd (encoded, then decoded with non-causal attention on Gemma)."""
        backend, start = self._backend, 0
        while start < len(tokens):
            end = start
            if tokens[start] >= 0:
                while end < len(tokens) and tokens[end] >= 0:
                    end += 1
                backend._eval(tokens[start:end], output_last and end == len(tokens))
            else:
                chunk, keys = self._images.get(tokens[start], (None, []))
                end = start + len(keys)
                if chunk is None or tokens[start:end] != keys:
                    raise BackendError(f"{backend.name}: an image's positions were split")
                self._decode(chunk, keys, output_last and end == len(tokens))
            start = end

    def _decode(self, chunk: Any, keys: list[int], logits_last: bool) -> None:
        backend, m = self._backend, self._m
        n_past = len(backend._kv.tokens)
        new_n_past = ctypes.c_int32(n_past)
        rc = m.mtmd_helper_eval_chunk_single(
            self._ctx, backend._kv.ctx, chunk, n_past, 0, backend.config.n_batch, logits_last,
            ctypes.byref(new_n_past),
        )  # fmt: skip
        if rc != 0 or new_n_past.value != n_past + len(keys):
            raise BackendError(f"{backend.name}: llama.cpp could not evaluate the frame ({rc})")
        backend._kv.extend(keys)

    def _free_chunks(self) -> None:
        self._images = {}
        if self._chunks:
            self._m.mtmd_input_chunks_free(self._chunks)
        self._chunks = None
