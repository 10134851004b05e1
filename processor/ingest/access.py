"""Who is asking: write keys, the client's address behind trusted proxies, and CORS.

Write keys are compared in constant time against every configured key and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable

from aiohttp import web

from processor.ingest.config import IngestConfig
from processor.ingest.errors import Problem, RequestError

__all__ = ["Access"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Access:
    """The front end's access rules, compiled once from IngestConfig."""

    def __init__(self, config: IngestConfig) -> None:
        self._keys = tuple(k.encode("utf-8") for k in config.write_keys)
        self._proxies: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies
        )
        self._any_origin = "*" in config.cors_origins
        self._origins = frozenset(config.cors_origins)

    @property
    def keys_required(self) -> bool:
        return bool(self._keys)

    # -- write keys ----------------------------------------------------------------------------

    @staticmethod
    def basic_user(request: web.Request) -> str | None:
        """The Basic-auth user name, as Segment sends its write key; None when absent or garbled."""
        header = request.headers.get("Authorization")
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0]

    def check_key(self, *candidates: object) -> None:
        """401 unless keys are off or the first given candidate is a configured key."""
        if not self._keys:
            return
        key = next((c for c in candidates if isinstance(c, str) and c), None)
        if key is None:
            raise RequestError(
                Problem.UNAUTHORIZED,
                "missing write key: send it as the Basic-auth user name (or writeKey in a Segment body)",
            )
        given = key.encode("utf-8")
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise RequestError(Problem.UNAUTHORIZED, "unknown write key")

    # -- client address ------------------------------------------------------------------------

    def client_ip(self, request: web.Request) -> str | None:
        """The peer address, or the client X-Forwarded-For names when the peer is a trusted proxy.

        The chain is read from the right, skipping trusted proxies: the first address that is
        not one of them is the client (anything further left could be forged).
        """
        peer = request.remote
        if not self._proxies or peer is None or not self._trusted(peer):
            return peer
        forwarded = request.headers.getall("X-Forwarded-For", [])
        hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            client = hop
            if not self._trusted(hop):
                break
        return client

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    # -- CORS ----------------------------------------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        return self._any_origin or origin in self._origins

    def cors_headers(self, request: web.Request) -> Iterable[tuple[str, str]]:
        """Headers that let a browser at an allowed Origin read the answer (none otherwise)."""
        origin = request.headers.get("Origin")
        if origin is None or not self.origin_allowed(origin):
            return ()
        return (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        )

    def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or not self.origin_allowed(origin):
            raise RequestError(Problem.FORBIDDEN_ORIGIN, f"origin {origin!r} is not allowed")
        asked = request.headers.get("Access-Control-Request-Headers", "Content-Type, Authorization")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": asked,
                "Access-Control-Max-Age": "86400",
                "Vary": "Origin",
            },
        )
