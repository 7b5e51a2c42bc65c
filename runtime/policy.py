"""The deployment's signature policy, read from the environment (never written):

  GENCC_REQUIRE_SIGNATURE=1     every artifact must carry a valid signature before any of it loads
  GENCC_TRUSTED_KEYS=A.pem:B.pem  the public keys (PEM files, separated by os.pathsep) accepted

It applies to artifacts (the files that carry native code; checkpoints hold none and cannot be signed)
wherever no trusted keys are passed explicitly: `gencc.load` without `trusted_keys`, `gencc sample`
without `--trusted-key`, and `gencc verify` before it runs an artifact's libraries.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import GenccError

REQUIRE_ENV, KEYS_ENV = "GENCC_REQUIRE_SIGNATURE", "GENCC_TRUSTED_KEYS"
ON, OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def required_keys(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """None when the environment does not require signatures; else the trusted key files, at least one."""
    environ = os.environ if environ is None else environ
    value = environ.get(REQUIRE_ENV, "")
    if value.strip().lower() in OFF:
        return None
    if value.strip().lower() not in ON:
        raise GenccError(f"{REQUIRE_ENV} must be 1 or 0 (or true/false, yes/no, on/off), got {value!r}")
    keys = [k.strip() for k in environ.get(KEYS_ENV, "").split(os.pathsep) if k.strip()]
    if not keys:
        raise GenccError(f"{REQUIRE_ENV}={value} requires every artifact to be signed, but {KEYS_ENV} names no "
                         f"trusted key; set it to public key files (PEM, from gencc keygen) separated by "
                         f"{os.pathsep!r}")
    return keys


def check_required_signature(path, environ: Mapping[str, str] | None = None) -> None:
    """Under the policy, refuse `path` unless a trusted key signed it; the message names the policy."""
    keys = required_keys(environ)
    if keys is None:
        return
    from .artifact import is_artifact
    from .signing import verify_signature

    if not is_artifact(path):   # a checkpoint holds no code (safetensors, weights-only torch): nothing to sign
        return
    try:
        verify_signature(path, keys)
    except GenccError as e:
        raise GenccError(f"{e} ({REQUIRE_ENV} is set; trusted keys from {KEYS_ENV})") from None
