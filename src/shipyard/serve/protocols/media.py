"""The body types SageMaker's serializers send and its deserializers ask for: JSON, CSV, JSON
Lines and NumPy's .npy, decoded to dataplane inputs and encoded from outputs.

`Content-Type` chooses the decoder (415 naming the supported types otherwise); `Accept` chooses
the encoder by its q-values, `*/*` or none meaning JSON (406 naming the supported types when it
names none of them).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import orjson

from shipyard.errors import InvalidInputError, NotAcceptableError, UnsupportedMediaTypeError
from shipyard.serve.protocols.rows import inputs_from_body, predictions
from shipyard.tensors import to_jsonable
from shipyard.types import Signature

JSON = "application/json"
CSV = "text/csv"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
SUPPORTED = (JSON, CSV, JSONLINES, NPY)
_NAMES = {
    **{media: media for media in SUPPORTED},
    "application/jsonl": JSONLINES,  # the other spellings clients use for JSON Lines
    "application/x-jsonlines": JSONLINES,
    "*/*": JSON,
    "application/*": JSON,
    "text/*": CSV,
}
_LISTED = ", ".join(SUPPORTED)


def content_media(content_type: str | None) -> str:
    """The request body's type; 415 naming the supported ones. A missing type is refused: a page
    on another origin may post without a CORS preflight only with none or a form type."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media.endswith("+json"):
        return JSON
    known = _NAMES.get(media)
    if known is None or "*" in media:
        given = f"Content-Type {content_type[:100]!r}" if content_type else "a request without Content-Type"
        raise UnsupportedMediaTypeError(
            f"{given} is not supported here; send one of {_LISTED}", field="content-type"
        )
    return known


def accept_media(accept: str | None) -> str:
    """The type to answer in: the client's most preferred supported one (406 if none is)."""
    if not accept or not accept.strip():
        return JSON
    choices = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        known = JSON if media.endswith("+json") else _NAMES.get(media)
        if known is not None and quality > 0:
            choices.append((-quality, position, known))
    if not choices:
        raise NotAcceptableError(
            f"Accept {accept[:100]!r} names no type this route answers in; accept one of {_LISTED}",
            field="accept",
        )
    return min(choices)[2]


def require_encodable(media: str, signature: Signature) -> None:
    """406 before any work when the answer cannot be written in `media`: .npy holds one array."""
    if media == NPY and len(signature.outputs) != 1:
        names = ", ".join(t.name for t in signature.outputs)
        raise NotAcceptableError(
            f"{NPY} holds one array and this model has {len(signature.outputs)} outputs ({names}); "
            f"accept {JSON}, {CSV} or {JSONLINES}",
            field="accept",
        )


def decode(media: str, body: bytes, signature: Signature) -> Any:
    """Dataplane inputs from a body of type `media`."""
    if media == CSV:
        return parse_csv(body)
    if media == NPY:
        return _parse_npy(body)
    if media == JSONLINES:
        return inputs_from_body({"instances": _parse_jsonlines(body)}, signature)
    return inputs_from_body(_parse_json(body, "request body"), signature)


def encode(media: str, outputs: dict[str, np.ndarray]) -> bytes:
    """The answer's body in `media`: JSON `{"predictions": …}`, one CSV line or JSON line per
    row, or the one output as .npy."""
    if media == CSV:
        return _csv_rows(outputs)
    if media == NPY:
        buffer = io.BytesIO()
        np.save(buffer, next(iter(outputs.values())), allow_pickle=False)
        return buffer.getvalue()
    if media == JSONLINES:
        rows = predictions(outputs)
        return b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows)
    return orjson.dumps({"predictions": predictions(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_csv(body: bytes) -> list[list[float]]:
    """CSV rows of numbers (no header), as SageMaker's built-in containers accept."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError("CSV body is not UTF-8 text", field="body") from exc
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            rows.append([float(cell) for cell in row])
        except ValueError:
            raise InvalidInputError(
                f"CSV line {number} has a value that is not a number: {','.join(row)[:80]!r}",
                field="body",
            ) from None
    if not rows:
        raise InvalidInputError("CSV body has no rows", field="body")
    return rows


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}", field="body") from exc


def _parse_jsonlines(body: bytes) -> list[Any]:
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        raise InvalidInputError("JSON Lines body has no lines", field="body")
    return [_parse_json(line, f"JSON Lines line {number}") for number, line in enumerate(lines, start=1)]


def _parse_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # what numpy raises for a bad or pickled file
        raise InvalidInputError(
            f"body is not a NumPy .npy array without objects: {exc}", field="body"
        ) from exc
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise InvalidInputError("body is an .npz archive; send one array as .npy", field="body")
    return array


def _csv_rows(outputs: dict[str, np.ndarray]) -> bytes:
    """One line per row: every output's values for that row, in output order."""
    columns = [
        to_jsonable(arr.reshape(len(arr), -1)) if arr.ndim else [[to_jsonable(arr)]]
        for arr in outputs.values()
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for parts in zip(*columns, strict=True):
        writer.writerow([value for part in parts for value in part])
    return text.getvalue().encode()
