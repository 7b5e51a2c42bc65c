"""The server's settings: its limits, its micro-batching and its security, in one frozen record."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gencc.runtime.errors import GenccError

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerConfig:
    """Caps on what one request may ask, how requests are merged, and who may call.

    `batch_size`: rows one compiled batch takes (requests waiting together are merged up to it);
    `batch_wait_ms`: how long the first waiting request waits for others to join its batch;
    `preview_every`: a job's events carry the denoised estimate every this many steps;
    `token`: the bearer token every route but /v2/health/* requires (None: no auth);
    `keep_jobs`: finished jobs kept for GET .../result, oldest dropped first.
    """

    max_n: int = 1024
    max_steps: int = 1000
    max_queue: int = 64
    max_body_bytes: int = 64 * 1024
    batch_size: int = 64
    batch_wait_ms: float = 5.0
    preview_every: int = 10
    token: str | None = None
    keep_jobs: int = 256
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_queue", "max_body_bytes", "batch_size", "preview_every", "keep_jobs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise GenccError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise GenccError(f"batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms!r}")
        if self.token is not None and not self.token.strip():
            raise GenccError("token must not be empty")

    def limits(self) -> dict:
        return {"max_n": self.max_n, "max_steps": self.max_steps, "max_queue": self.max_queue,
                "max_body_bytes": self.max_body_bytes, "batch_size": self.batch_size,
                "batch_wait_ms": self.batch_wait_ms, "preview_every": self.preview_every}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """A server reachable from other machines needs a token, or the user's explicit word that it needs none."""
    if token and insecure_no_auth:
        raise GenccError("--token and --insecure-no-auth contradict each other; give one")
    if not is_loopback(host) and not token and not insecure_no_auth:
        raise GenccError(f"--host {host} is reachable from other machines: give --token SECRET (clients send "
                         "'Authorization: Bearer SECRET'), or --insecure-no-auth to serve without auth")
