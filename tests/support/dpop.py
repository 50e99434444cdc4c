"""A DPoP client's key (RFC 9449), and its proofs for one request: for the unit tests of
app.security.dpop and for the token requests and API calls of the real Better Auth's flows."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

from app.security.dpop import thumbprint


class DpopKey:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(pyjwt.get_algorithm_by_name("ES256").to_jwk(self.private.public_key()))
        self.jkt = thumbprint(self.jwk)

    def proof(self, method: str, url: str, token: str | None = None, **change) -> str:
        """A fresh proof for `method` on `url`, bound to the access token `token` (`ath`) when
        there is one (a token request has none); `change` overrides any claim."""
        claims = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time())}
        if token is not None:
            claims["ath"] = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
        return pyjwt.encode({**claims, **change}, self.private, "ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})
