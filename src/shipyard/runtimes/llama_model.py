"""llama.cpp's library and one loaded GGUF model: its vocabulary (tokens in, text out) and the
facts the registry records. The token-level scheduler is in `runtimes/llama_cpp.py`."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError

log = logging.getLogger("shipyard.llama_cpp")

_lock = threading.Lock()
_state: dict[str, Any] = {}
_recent_lines: deque[str] = deque(maxlen=32)  # llama.cpp's last log lines, to explain a failed load


def library() -> Any:
    """The `llama_cpp.llama_cpp` ctypes module, with llama.cpp's log routed to Python logging."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        try:
            import llama_cpp.llama_cpp as lib
        except ModuleNotFoundError as exc:
            raise MissingDependencyError("llama_cpp", "llm", "GGUF models") from exc

        @lib.llama_log_callback  # type: ignore[untyped-decorator]
        def _on_log(level: int, text: bytes, _user: Any) -> None:
            line = text.decode("utf-8", errors="replace").rstrip()
            if line:
                _recent_lines.append(line)
                log.debug("%s", line)

        _state["callback"] = _on_log  # llama.cpp keeps only the pointer: keep the function alive
        lib.llama_log_set(_on_log, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _state["lib"] = lib
        return lib


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:  # pragma: no cover - installed without metadata
        return "unknown"


def _load_failure(label: str) -> str:
    marker = "error loading model: "
    reasons = [line.split(marker, 1)[1] for line in _recent_lines if marker in line]
    reason = reasons[-1] if reasons else "no reason given (damaged file?)"
    return (
        f"llama.cpp (llama-cpp-python {package_version()}) cannot load {label}: {reason}; "
        "use a GGUF of an architecture llama.cpp supports"
    )


class LlamaModel:
    """A GGUF model loaded by llama.cpp, weights memory-mapped (so processes share one copy)."""

    def __init__(self, path: Path, *, label: str, vocab_only: bool = False) -> None:
        lib = library()
        params = lib.llama_model_default_params()
        params.vocab_only = vocab_only
        params.n_gpu_layers = 0 if vocab_only else params.n_gpu_layers
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP
        # Repacking weights into CPU-specific layouts copies them out of the mapping: keep them
        # mapped so several workers share one copy in the page cache.
        params.use_extra_bufts = False
        _recent_lines.clear()
        model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise InvalidInputError(_load_failure(label), field="path")
        self.lib = lib
        self.ptr = model
        self.vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lib.llama_vocab_bos(self.vocab))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = self.lib.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`: control tokens written in it are parsed, and BOS is added when the
        model wants one (once, even if the text already starts with it)."""
        data = text.encode("utf-8")
        size = len(data) + 2
        tokens = (ctypes.c_int32 * size)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, size, True, special)
        if n < 0:
            size = -n
            tokens = (ctypes.c_int32 * size)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, size, True, special)
        ids = list(tokens[:n])
        if self.add_bos and len(ids) > 1 and ids[0] == ids[1] == self.bos:
            ids = ids[1:]
        return ids

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (a UTF-8 character may span several tokens)."""
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_model_free(self.ptr)
            self.ptr = None


def check_loadable(path: Path, label: str) -> None:
    """Refuse a GGUF llama.cpp cannot run (unknown architecture, damaged vocabulary), by loading
    its header and vocabulary only (fast: no weights are read)."""
    LlamaModel(path, label=label, vocab_only=True).close()
