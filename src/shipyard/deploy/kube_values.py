"""What Kubernetes accepts as a resource quantity and as an object or namespace name, checked
before anything is written, so a typo is one line here rather than a rejected `kubectl apply`."""

from __future__ import annotations

import re

from shipyard.errors import InvalidInputError

# Kubernetes' own quantity grammar (apimachinery's resource.Quantity): a decimal number, then a
# binary suffix (Ki…Ei), a decimal one (n, u, m, "", k, M, G, T, P, E) or an exponent (e3, E-2).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
# RFC 1123 label (namespaces, most object names) and RFC 1035 label (Service names: a letter first).
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_MAX = 63


def quantity_value(text: str, option: str) -> float:
    """The value of a Kubernetes quantity (`500m` → 0.5, `2Gi` → 2147483648); it must be > 0."""
    match = _QUANTITY.match(text.strip()) if text else None
    if match is None:
        raise InvalidInputError(
            f"--{option} {text!r} is not a Kubernetes quantity; write e.g. 500m, 2, 1.5, 512Mi or 4Gi",
            field=option,
        )
    number, suffix = float(match["number"]), match["suffix"] or ""
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    else:
        value = number * 10 ** int(suffix[1:])
    if value <= 0:
        raise InvalidInputError(f"--{option} {text!r} must be more than zero", field=option)
    return value


def check_label(text: str, option: str, *, letter_first: bool = False) -> str:
    """`text` if Kubernetes takes it as a name (an RFC 1123 label, or RFC 1035 with `letter_first`)."""
    pattern = _RFC1035_LABEL if letter_first else _RFC1123_LABEL
    if len(text) > LABEL_MAX or pattern.match(text) is None:
        first = "a lowercase letter" if letter_first else "a lowercase letter or digit"
        raise InvalidInputError(
            f"--{option} {text!r} is not a name Kubernetes accepts: at most {LABEL_MAX} lowercase letters, "
            f"digits and '-', starting with {first} and ending with a letter or digit",
            field=option,
        )
    return text
