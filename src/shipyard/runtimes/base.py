"""What every runtime offers, and a switch that quiets a library's own chatter."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from shipyard.types import Signature


class Runtime(Protocol):
    """One loaded version. Safe for one caller at a time; heavy work releases the GIL."""

    signature: Signature
    can_batch: bool  # rows along axis 0 are independent, so requests may be merged

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence a library's own warnings and logs (exporters, quantizers): none of it is the user's
    concern. torch's loggers set their own levels, so only a global switch silences them."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A dependency's exception as one short line: native libraries often report several."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
