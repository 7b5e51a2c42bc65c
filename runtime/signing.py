"""Ed25519 signatures over an artifact's manifest.json: who built it, on top of the hashes' what.

The manifest lists the sha256 of every file, so a signature over its exact bytes covers the whole
artifact. `signature.json` sits beside it (it is not in the manifest's file list):
  {"format": "gencc-signature", "version": 1, "algorithm": "ed25519",
   "key": "sha256:<hex of the raw 32-byte public key>", "signature": "<base64 of 64 bytes>"}
Checking needs only the manifest and this file, so it happens before anything else is read or loaded.
`cryptography` is imported inside the functions: the runtime imports only numpy up front.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_dir, check_output_path, write_bytes_atomic
from .errors import GenccError
from .jsonfile import one_line, read_json, short

SIGNATURE = "signature.json"
FORMAT = "gencc-signature"
VERSION = 1
PRIVATE, PUBLIC = "private.pem", "public.pem"
MAX_KEY_BYTES = 1 << 14


def _require_crypto() -> None:
    """Signatures need the `cryptography` package (a gencc dependency): say so, rather than fail deep inside."""
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError:
        raise GenccError("signing and checking signatures need the Python package 'cryptography', which is not "
                         "installed: pip install 'cryptography>=42' (or reinstall gencc)") from None


def generate_keys(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair to out_dir/private.pem (mode 0600) and out_dir/public.pem."""
    _require_crypto()
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out_dir = check_output_path(out_dir, what="key folder", directory=True)
    out_dir.mkdir(exist_ok=True)
    for p in (out_dir / PRIVATE, out_dir / PUBLIC):   # overwriting a private key would lose it for good
        check_output_path(p, what="key", existing="choose another --out")
    private, public = out_dir / PRIVATE, out_dir / PUBLIC
    key = Ed25519PrivateKey.generate()
    write_bytes_atomic(private, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
                       mode=0o600)
    write_bytes_atomic(public, key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: str | Path):
    """An unencrypted Ed25519 private key from a PEM file, as written by `generate_keys`."""
    _require_crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_key_file(path, "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:   # TypeError: the key is encrypted
        raise GenccError(f"private key {str(path)!r} is not an unencrypted PEM private key: {one_line(e)}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise GenccError(f"private key {str(path)!r} is {type(key).__name__}; gencc signs with Ed25519 keys")
    return key


def load_public_key(key):
    """An Ed25519 public key: a PEM file path, or a key object (public or private) as is."""
    _require_crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if not isinstance(key, (str, os.PathLike)):
        raise GenccError(f"a trusted key must be a PEM file path or an Ed25519 key, got {type(key).__name__}")
    try:
        public = load_pem_public_key(_read_key_file(key, "public key"))
    except ValueError as e:
        raise GenccError(f"public key {str(key)!r} is not a PEM public key: {one_line(e)}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise GenccError(f"public key {str(key)!r} is {type(public).__name__}; gencc signs with Ed25519 keys")
    return public


def fingerprint(public_key) -> str:
    _require_crypto()
    from cryptography.hazmat.primitives import serialization as ser

    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def signature_record(manifest_bytes: bytes, private_key) -> bytes:
    """The bytes of signature.json for these exact manifest bytes."""
    record = {"format": FORMAT, "version": VERSION, "algorithm": "ed25519",
              "key": fingerprint(private_key.public_key()),
              "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode()}
    return (json.dumps(record, indent=2) + "\n").encode()


def sign_into(root: str | Path, private_key) -> None:
    """Sign root/manifest.json, in a directory not yet published (compile's temporary directory)."""
    from .artifact import MANIFEST

    root = Path(root)
    (root / SIGNATURE).write_bytes(signature_record((root / MANIFEST).read_bytes(), private_key))


def replace_manifest(root: str | Path, manifest_bytes: bytes, private_key) -> None:
    """Swap in a new manifest and its signature together: a rewritten directory of hard links to
    the unchanged files, renamed into place, so no reader sees one without the other."""
    from .artifact import MANIFEST

    root = Path(root)
    with atomic_dir(root) as tmp:
        for p in root.iterdir():
            if p.is_file() and not p.is_symlink() and p.name not in (MANIFEST, SIGNATURE):
                _link_or_copy(p, tmp / p.name)
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        (tmp / SIGNATURE).write_bytes(signature_record(manifest_bytes, private_key))


def is_signed(root: str | Path) -> bool:
    return (Path(root) / SIGNATURE).exists()


def signer(root: str | Path) -> str | None:
    """The key fingerprint signature.json names, unchecked (for `gencc info`); None if unsigned."""
    if not is_signed(root):
        return None
    try:
        record = read_json(Path(root) / SIGNATURE, "artifact signature")
    except GenccError:
        return "<malformed>"
    key = record.get("key") if isinstance(record, dict) else None
    return key if isinstance(key, str) else "<malformed>"


def verify_signature(root: str | Path, trusted_keys: Iterable) -> str:
    """Check that one of `trusted_keys` signed root/manifest.json as it is now; return its fingerprint."""
    _require_crypto()
    from cryptography.exceptions import InvalidSignature

    from .artifact import MANIFEST, MAX_MANIFEST_BYTES

    root = Path(root)
    if isinstance(trusted_keys, (str, os.PathLike)) or not hasattr(trusted_keys, "__iter__"):
        trusted_keys = [trusted_keys]   # one key given on its own
    keys = {fingerprint(k): k for k in map(load_public_key, trusted_keys)}
    if not keys:
        raise GenccError("a signature is required but no trusted keys were given")
    if not (root / SIGNATURE).exists():
        raise GenccError(f"{root}: the artifact is not signed (no {SIGNATURE}) and a signature is required")
    record = read_json(root / SIGNATURE, "artifact signature")
    if not (isinstance(record, dict) and record.get("format") == FORMAT and record.get("algorithm") == "ed25519"
            and isinstance(record.get("key"), str) and isinstance(record.get("signature"), str)):
        raise GenccError(f"{root}: {SIGNATURE} is not a gencc Ed25519 signature record")
    if record.get("version") != VERSION or isinstance(record.get("version"), bool):
        raise GenccError(f"{root}: signature format version {short(record.get('version'))} is not supported; "
                         f"this gencc reads version {VERSION}")
    key = keys.get(record["key"])
    if key is None:
        raise GenccError(f"{root}: signed by key {short(record['key'])}, which is not among the trusted keys")
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except ValueError:   # not base64 (binascii.Error), or not even ASCII
        raise GenccError(f"{root}: {SIGNATURE} holds a malformed signature") from None
    manifest = root / MANIFEST
    if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
        raise GenccError(f"{root}: no regular {MANIFEST} within the size limit to check the signature against")
    try:
        key.verify(signature, manifest.read_bytes())
    except InvalidSignature:
        raise GenccError(f"{root}: the signature by {record['key'][:23]}... does not match {MANIFEST}: "
                         "the artifact was modified after it was signed") from None
    return record["key"]


def _read_key_file(path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise GenccError(f"{what} {str(p)!r} does not exist or is not a file")
    if p.stat().st_size > MAX_KEY_BYTES:
        raise GenccError(f"{what} {str(p)!r} is too large to be a PEM key")
    return p.read_bytes()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)   # files are only ever replaced whole, never edited, so sharing them is safe
    except OSError:
        shutil.copyfile(src, dst)
