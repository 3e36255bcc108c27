"""Who may call, and how often: bearer API keys and a per-key token-bucket rate limit.

Keys come from the launcher (`COREA_API_KEYS`); none set means no auth, which `app.serve`
allows on a loopback address only. A client is named by its key's index ("key-0"), never by
the key, in logs and records.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time

from corea_jax.serving.protocol import APIError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_keys(text: str | None) -> list[str]:
    """Comma-separated keys (blank entries dropped)."""
    return [key.strip() for key in (text or "").split(",") if key.strip()]


class KeyRing:
    def __init__(self, keys: list[str]):
        self.keys = list(keys)

    def client(self, authorization: str | None) -> str:
        """The caller's name from an `Authorization: Bearer <key>` header; APIError 401 otherwise."""
        if not self.keys:
            return "anonymous"
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and key:
            for index, known in enumerate(self.keys):
                if hmac.compare_digest(key.strip().encode(), known.encode()):
                    return f"key-{index}"
        raise APIError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                       type="authentication_error", code="invalid_api_key")


class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `per_minute` / 60 a second;
    per_minute 0 turns it off."""

    def __init__(self, per_minute: float, burst: int):
        self.rate, self.burst = per_minute / 60.0, max(1, int(burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Takes one token for `client`, or raises APIError 429 with Retry-After (seconds)."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise APIError(429, f"rate limit exceeded for {client}: {self.rate * 60:g} requests a minute "
                               f"(burst {self.burst}); retry after {wait} s", type="rate_limit_error",
                               code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
            self._buckets[client] = (tokens - 1.0, now)
