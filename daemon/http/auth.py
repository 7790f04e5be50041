"""The bearer-token comparison, one function for the auth middleware and the routes that show more to a token's
holder than to a stranger."""

from __future__ import annotations

import hmac

import falcon


def bearer_matches(req: falcon.Request, token: str) -> bool:
    """The request carries `Authorization: Bearer <token>`."""
    scheme, _, given = (req.get_header("Authorization") or "").strip().partition(" ")
    # The scheme name is case-insensitive (RFC 7235 section 2.1); only the token is secret, so only it
    # needs the constant-time comparison, and it runs whatever the scheme so timing says nothing.
    token_ok = hmac.compare_digest(given.strip().encode(), token.encode())
    return token_ok and scheme.lower() == "bearer"
