"""Ed25519 signatures of versions: a key signs a version's name, number and artifact digest.

The digest covers every byte of the artifact (it is re-checked on each load), so a valid
signature says the holder of the key vouched for exactly these files under exactly this
reference. Keys are PEM files: PKCS#8 for the private key (mode 0600), SubjectPublicKeyInfo for
the public one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import IntegrityError, InvalidInputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_DOMAIN = b"shipyard-version-signature-v1\n"  # a signature made for anything else never verifies here


def generate_key(out: Path) -> tuple[Path, Path]:
    """Write a new private key to `out` (0600) and its public key to `out.pub`; refuses to
    overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise InvalidInputError(f"{path} already exists; choose another --out", field="out")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start: never readable by others, not even for an instant.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return out, public_path


def _read(path: Path, what: str, field: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the {what} {path}: {exc.strerror}", field=field) from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "private key", "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{path} is not an unencrypted PEM private key; create one with `shipyard keygen --out FILE`",
            field="key",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError(
            f"{path} is not an Ed25519 key; create one with `shipyard keygen`", field="key"
        )
    return key


def load_public_key(path: Path, field: str = "signed_by") -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, "public key", field)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        hint = " (this is a private key: give its .pub file)" if b"PRIVATE KEY" in data else ""
        raise InvalidInputError(f"{path} is not a PEM public key{hint}", field=field) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError(f"{path} is not an Ed25519 public key", field=field)
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """`sha256:` and the first 32 hex digits of the SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _message(name: str, version: int, digest: str) -> bytes:
    body = json.dumps({"name": name, "version": version, "digest": digest}, sort_keys=True)
    return _DOMAIN + body.encode()


def sign(key: Ed25519PrivateKey, name: str, version: int, digest: str) -> str:
    """The base64 signature of (name, version, digest)."""
    return base64.b64encode(key.sign(_message(name, version, digest))).decode()


def check(key: Ed25519PublicKey, stored: list[dict[str, Any]], name: str, version: int, digest: str) -> str:
    """The fingerprint of `key` if one of the `stored` signatures of name:version is by `key` and
    matches (name, version, digest); IntegrityError saying what is wrong otherwise."""
    from cryptography.exceptions import InvalidSignature

    wanted = fingerprint(key)
    ref = f"{name}:{version}"
    mine = next((s for s in stored if s["fingerprint"] == wanted), None)
    if mine is None:
        by = f" (it is signed by {', '.join(s['fingerprint'] for s in stored)})" if stored else ""
        raise IntegrityError(
            f"{ref} is not signed by key {wanted}{by}; sign it with `shipyard sign {ref} --key KEY_FILE`"
        )
    try:
        key.verify(base64.b64decode(mine["signature"], validate=True), _message(name, version, digest))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise IntegrityError(
            f"the signature of {ref} by key {wanted} does not match its name, version and digest "
            f"(altered?); re-sign it with `shipyard sign {ref} --key KEY_FILE` if the artifact is trusted"
        ) from exc
    return wanted
