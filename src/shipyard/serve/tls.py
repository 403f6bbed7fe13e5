"""The server's TLS context, and its certificates reloaded without dropping a connection.

Reloading builds a whole new `SSLContext` and swaps it in for new handshakes; the context given to
the listener only picks the current one in its SNI callback, which OpenSSL calls on every
ClientHello (with no name when the client sends none). Loading a new pair into the live context
instead would work for a good pair, but a key that does not match its certificate leaves that
context with no usable key and every later handshake fails; a separate context cannot.
Connections already open keep the context they were made with.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.settings import ServeSettings

log = logging.getLogger("shipyard.serve.tls")

POLL_INTERVAL_S = 2.0


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, serve: ServeSettings) -> TlsFiles | None:
        if serve.tls_cert is None or serve.tls_key is None:
            return None  # ServeSettings refuses one without the other
        client_ca = None if serve.tls_client_ca is None else Path(serve.tls_client_ca)
        return cls(Path(serve.tls_cert), Path(serve.tls_key), client_ca)

    def paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, the server's cipher order, no compression, and client
    certificates required and checked against `client_ca` when one is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    for path, flag in (
        (files.cert, "--tls-cert"),
        (files.key, "--tls-key"),
        (files.client_ca, "--tls-client-ca"),
    ):
        if path is not None and not path.is_file():
            raise InvalidInputError(f"{flag} {str(path)!r}: no such file", field=flag.removeprefix("--"))
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise InvalidInputError(
            f"--tls-cert/--tls-key: cannot use {str(files.cert)!r} with {str(files.key)!r} "
            f"({_reason(exc)}); give a PEM certificate and its matching unencrypted private key",
            field="tls-cert",
        ) from exc
    except OSError as exc:
        raise InvalidInputError(
            f"--tls-cert/--tls-key: cannot read them ({exc.strerror})", field="tls-cert"
        ) from exc
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInputError(
                f"--tls-client-ca {str(files.client_ca)!r}: not a PEM CA certificate ({_reason(exc)})",
                field="tls-client-ca",
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason not in ("", "PEM_LIB"):
        return reason.replace("_", " ").lower()
    return exc.strerror or "not in PEM form"


class ReloadingContext:
    """The listener's context, handing new handshakes the latest good certificate pair."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._current = build_context(files)
        self._stamps = self._stat()
        self.context = build_context(files)  # only ever used to start handshakes
        self.context.sni_callback = self._choose
        self._wake = threading.Event()
        self._forced = False

    def _choose(self, connection: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        connection.context = self._current

    def _stat(self) -> list[tuple[int, int, int] | None]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.files.paths():
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)  # mid-replacement; the next poll sees the new file
        return stamps

    def reload(self) -> bool:
        """Swap in a context built from the files now; a bad pair keeps the current one."""
        self._stamps = self._stat()
        try:
            self._current = build_context(self.files)
        except InvalidInputError as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc.message)
            return False
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    def request_reload(self) -> None:
        """Reload at once (SIGHUP); safe from a signal handler."""
        self._forced = True
        self._wake.set()

    def watch(self, interval: float = POLL_INTERVAL_S) -> None:
        """Reload when asked or when a file changes, in a daemon thread, until the process ends."""

        def loop() -> None:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                forced, self._forced = self._forced, False
                if forced or self._stat() != self._stamps:
                    self.reload()

        threading.Thread(target=loop, name="shipyard-tls-reload", daemon=True).start()


def start_reloading(serve: ServeSettings) -> Callable[[Any, Any], ssl.SSLContext] | None:
    """uvicorn's `ssl_context_factory` serving the configured certificates, reloaded on SIGHUP and
    on file change; None without TLS. Call from the main thread (it installs the SIGHUP handler)."""
    files = TlsFiles.from_settings(serve)
    if files is None:
        return None
    reloading = ReloadingContext(files)
    signal.signal(signal.SIGHUP, lambda *_: reloading.request_reload())
    reloading.watch()
    return lambda _config, _default: reloading.context


def forward_sighup(pids: Callable[[], list[int]]) -> None:
    """In a parent of workers: pass SIGHUP on to each of `pids()` instead of exiting."""

    def forward(_signum: int, _frame: Any) -> None:
        for pid in pids():
            os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward)
