"""Who may call, and how often: bearer API keys and a per-key token-bucket rate limit.

Keys come from the launcher (`COREA_API_KEYS`; `COREA_METRICS_KEYS` for scrapers that may read
/metrics and /health's details only); none set means no auth, which `app.serve` allows on a
loopback address only, behind `LoopbackGuard`. A client is named by its key's index ("key-0"),
never by the key, in logs and records.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import threading
import time

from corea_jax.serving.protocol import APIError

log = logging.getLogger("corea_jax.serving.requests")


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


def _match(authorization: str | None, keys: list[str]) -> int | None:
    """The index of the bearer key among `keys` (constant-time per key), or None."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return None
    found = None
    for index, known in enumerate(keys):
        if hmac.compare_digest(key.strip().encode(), known.encode()):
            found = index
    return found


class KeyRing:
    def __init__(self, keys: list[str], metrics_keys: list[str] = ()):
        self.keys, self.metrics_keys = list(keys), list(metrics_keys)

    @property
    def open(self) -> bool:
        return not self.keys

    def client(self, authorization: str | None) -> str:
        """The caller's name from an `Authorization: Bearer <key>` header; APIError 401 otherwise."""
        if not self.keys:
            return "anonymous"
        index = _match(authorization, self.keys)
        if index is None:
            raise _unauthorized()
        return f"key-{index}"

    def metrics_client(self, authorization: str | None) -> str:
        """Like `client`, also accepting a metrics key (named "metrics-N")."""
        if not self.keys:
            return "anonymous"
        index = _match(authorization, self.metrics_keys)
        return f"metrics-{index}" if index is not None else self.client(authorization)

    def allows(self, authorization: str | None) -> bool:
        """Whether the caller may read the server's details (/health's, /metrics)."""
        try:
            self.metrics_client(authorization)
        except APIError:
            return False
        return True


def _unauthorized() -> APIError:
    return APIError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                    type="authentication_error", code="invalid_api_key")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _hostname(value: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '[::1]'; an origin's scheme dropped."""
    value = value.split("://", 1)[-1].split("/", 1)[0].lower()
    if value.startswith("["):
        return value[:value.index("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LoopbackGuard:
    """ASGI middleware of a keyless (loopback) server: what a web page in the user's browser,
    or a DNS-rebinding attack, could send is refused. A Host other than a loopback name (403),
    an Origin other than a loopback one (403), and a POST whose Content-Type is not
    application/json (415: a cross-origin page can send text/plain without a preflight)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                state = getattr(getattr(scope.get("app"), "state", None), "corea", None)
                if state is not None and scope["path"] == "/v1/chat/completions":
                    state.metrics.request_done("unknown", refusal.status, 0.0)
                log.warning("%s %s refused by the loopback guard: status=%d %s", scope["method"], scope["path"],
                            refusal.status, refusal.message[:200])
                return await _send_error(send, refusal)
        await self.app(scope, receive, send)

    @staticmethod
    def refusal(scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if _hostname(host) not in LOOPBACK_NAMES:
            return APIError(403, f"host: this keyless server answers loopback names only "
                            f"({', '.join(LOOPBACK_NAMES)}), found {host!r}", param="host", code="forbidden_host")
        origin = headers.get("origin")
        if origin is not None and _hostname(origin) not in LOOPBACK_NAMES:
            return APIError(403, f"origin: cross-origin requests are refused by this keyless server, "
                            f"found {origin!r}", param="origin", code="forbidden_origin")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return APIError(415, f"content-type: expected application/json, found {kind or 'none'!r}",
                                param="content-type", code="unsupported_media_type")
        return None


async def _send_error(send, err: APIError) -> None:
    import json

    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
