"""A JWKS endpoint on loopback that a test controls: its keys, its delay, its outages."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

GENERATORS = {
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES512": lambda: ec.generate_private_key(ec.SECP521R1()),
    "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
ALGORITHM_OBJECTS = {"EdDSA": "EdDSA", "ES256": "ES256", "ES512": "ES512", "PS256": "PS256", "RS256": "RS256"}


class SigningKey:
    def __init__(self, alg: str, kid: str) -> None:
        self.alg, self.kid = alg, kid
        self.private = GENERATORS[alg]()

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = pyjwt.get_algorithm_by_name(self.alg)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return pyjwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.delay = 0.0
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits += 1
                time.sleep(server.delay)
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/auth/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, key: SigningKey) -> SigningKey:
        self.keys.append(key.public_jwk)
        return key

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
