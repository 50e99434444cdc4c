"""JWKS mode: keys chosen by kid from the configured URL only, the key family must match
the algorithm, rotation works, kid floods don't become fetch floods, outages fail closed."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from app.services import services
from tests.conftest import SECRET, bearer, encode, me
from tests.support.jwks_server import JwksServer, SigningKey
from tests.support.servers import wait_until

ISSUER = "https://auth.example.com"


@pytest.fixture
def settings_overrides(jwks):
    return {"JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": "", "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER,
            "JWKS_MIN_REFETCH_SECONDS": "5", "JWKS_TIMEOUT_SECONDS": "1"}


def claims(user_id: str = "alice", **extra) -> dict:
    now = int(time.time())
    return {"sub": user_id, "id": user_id, "iat": now, "exp": now + 900, "iss": ISSUER, "aud": ISSUER, **extra}


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "ES512", "PS256", "RS256"])
def test_every_better_auth_algorithm_verifies(client, jwks, alg):
    key = jwks.publish(SigningKey(alg, f"kid-{alg}"))
    assert me(client, key.sign(claims())) == 200


def test_rotation_new_kid_is_fetched_and_old_keys_keep_working(client, jwks):
    old = jwks.publish(SigningKey("EdDSA", "old"))
    assert me(client, old.sign(claims())) == 200
    new = jwks.publish(SigningKey("EdDSA", "new"))
    assert me(client, new.sign(claims())) == 200
    assert me(client, old.sign(claims())) == 200
    assert jwks.hits == 2


def test_a_flood_of_unknown_kids_costs_at_most_one_fetch_per_cooldown(client, jwks):
    key = jwks.publish(SigningKey("ES256", "real"))
    assert me(client, key.sign(claims())) == 200
    hits = jwks.hits
    for _ in range(50):
        forged = SigningKey("ES256", uuid.uuid4().hex)
        assert me(client, forged.sign(claims())) == "invalid_token"
    assert jwks.hits - hits <= 1


def test_cached_keys_keep_working_while_the_endpoint_is_down(client, jwks):
    key = jwks.publish(SigningKey("EdDSA", "k1"))
    assert me(client, key.sign(claims())) == 200
    jwks.status = 500
    jwks.keys = []
    assert me(client, key.sign(claims())) == 200


def test_no_usable_key_at_all_is_a_503_not_a_401(client, jwks):
    jwks.status = 503
    response = client.get("/api/v1/auth/me", headers=bearer(SigningKey("EdDSA", "k").sign(claims())))
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"


def test_a_slow_jwks_endpoint_costs_a_bounded_time(client, jwks):
    jwks.publish(SigningKey("EdDSA", "k"))
    jwks.delay = 3
    started = time.monotonic()
    response = client.get("/api/v1/auth/me", headers=bearer(SigningKey("EdDSA", "k").sign(claims())))
    assert time.monotonic() - started < 2.5
    assert response.status_code == 503


class TricklingJwks:
    """A JWKS endpoint on loopback that serves its document at once, or (trickle=True) one
    byte every 0.4 s for a few seconds, then hangs up."""

    def __init__(self, document: bytes) -> None:
        self.document, self.trickle = document, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api/auth/jwks"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                   + str(len(self.document)).encode() + b"\r\nConnection: close\r\n\r\n")
                if not self.trickle:
                    connection.sendall(self.document)
                    return
                for byte in self.document[:10]:
                    connection.sendall(bytes([byte]))
                    time.sleep(0.4)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


class TestATricklingJwksEndpoint:
    @pytest.fixture
    def signing_key(self) -> SigningKey:
        return SigningKey("EdDSA", "k1")

    @pytest.fixture
    def jwks(self, signing_key) -> Iterator[TricklingJwks]:
        server = TricklingJwks(json.dumps({"keys": [signing_key.public_jwk]}).encode())
        yield server
        server.close()

    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"JWKS_URL": jwks.url, "JWT_ALGORITHMS": "EdDSA", "BETTER_AUTH_SECRET": "", "JWT_ISSUER": "",
                "JWT_AUDIENCE": "", "JWKS_TIMEOUT_SECONDS": "1", "JWKS_CACHE_SECONDS": "1",
                "JWKS_MIN_REFETCH_SECONDS": "1"}

    def token(self, signing_key) -> str:
        now = int(time.time())
        return signing_key.sign({"sub": "alice", "iat": now, "exp": now + 900})

    def test_the_whole_fetch_is_bounded_by_the_timeout(self, client, jwks, signing_key):
        jwks.trickle = True
        started = time.monotonic()
        assert me(client, self.token(signing_key)) == "service_unavailable"  # no key could be fetched
        assert time.monotonic() - started < 1.8

    def test_requests_with_known_keys_never_wait_on_a_refresh(self, client, jwks, signing_key):
        token = self.token(signing_key)
        assert me(client, token) == 200
        jwks.trickle = True
        time.sleep(1.1)  # the key set is stale: it is refreshed, and the refresh trickles
        for _ in range(3):
            started = time.monotonic()
            assert me(client, token) == 200
            assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("header_alg,key_alg", [("ES256", "RS256"), ("RS256", "ES256"), ("ES512", "ES256"),
                                                ("ES256", "ES512"), ("EdDSA", "ES256"), ("PS256", "EdDSA")])
def test_the_key_family_must_match_the_algorithm(client, jwks, header_alg, key_alg):
    published = jwks.publish(SigningKey(key_alg, "k"))
    signer = SigningKey(header_alg, "k")  # signs with its own key, claims the published kid
    assert me(client, signer.sign(claims())) == "invalid_token"
    assert me(client, published.sign(claims())) == 200


def test_a_kid_with_another_algorithm_in_the_jwk_is_rejected(client, jwks):
    key = SigningKey("RS256", "k")
    jwks.keys.append({**key.public_jwk, "alg": "PS256"})
    assert me(client, key.sign(claims())) == "invalid_token"


def test_symmetric_keys_in_the_jwks_are_never_used(client, jwks):
    jwks.keys.append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"})
    token = encode(claims(), b"secret-secret-secret-secret-secret", "HS256", {"kid": "hmac"})
    assert me(client, token) == "invalid_token"


def test_embedded_jwk_jku_and_x5u_headers_are_never_followed(client, jwks):
    jwks.publish(SigningKey("ES256", "real"))
    with JwksServer() as attacker:
        evil = attacker.publish(SigningKey("ES256", "evil"))
        headers = {"jku": attacker.url, "x5u": attacker.url, "jwk": evil.public_jwk}
        assert me(client, evil.sign(claims(), headers)) == "invalid_token"
        assert attacker.hits == 0


def test_a_token_without_kid_is_rejected(client, jwks):
    key = jwks.publish(SigningKey("EdDSA", "k"))
    import jwt as pyjwt

    token = pyjwt.encode(claims(), key.private, algorithm="EdDSA")
    assert me(client, token) == "invalid_token"


def test_hs256_is_refused_in_jwks_only_mode(client, jwks):
    jwks.publish(SigningKey("EdDSA", "k"))
    assert me(client, encode(claims(), SECRET)) == "invalid_token"


class TestALeftoverSecretBesideAJwks:
    """JWKS mode with BETTER_AUTH_SECRET still set: HS256 stays closed, for access and logout tokens."""

    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER}

    def test_only_the_jwks_keys_verify(self, client, jwks):
        key = jwks.publish(SigningKey("ES256", "k"))
        assert me(client, key.sign(claims())) == 200
        assert me(client, encode(claims(), SECRET)) == "invalid_token"

    def test_a_logout_token_signed_with_the_secret_is_refused(self, client, app):
        now = int(time.time())
        logout = encode({"iss": ISSUER, "aud": ISSUER, "iat": now, "exp": now + 60, "jti": "l-1", "sub": "alice",
                         "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}, SECRET,
                        headers={"typ": "logout+jwt"})
        response = client.post("/api/v1/auth/backchannel-logout", data={"logout_token": logout})
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


class TestSecretAndJwksTogether:
    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER,
                "JWT_ALGORITHMS": "HS256,ES256,RS256"}

    def test_both_kinds_verify_when_hs256_is_named(self, client, jwks):
        key = jwks.publish(SigningKey("ES256", "k"))
        assert me(client, key.sign(claims())) == 200
        assert me(client, encode(claims(), SECRET)) == 200

    @pytest.mark.parametrize("encoding", ["pem", "der", "jwk"])
    def test_hmac_signed_with_the_public_key_is_rejected(self, client, jwks, encoding):
        key = jwks.publish(SigningKey("RS256", "k"))
        public = key.private.public_key()
        material = {
            "pem": lambda: public.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo),
            "der": lambda: public.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo),
            "jwk": lambda: str(key.public_jwk).encode(),
        }[encoding]()
        import hashlib
        import hmac

        import jwt as pyjwt

        header = pyjwt.utils.base64url_encode(b'{"alg":"HS256","kid":"k"}').decode()
        payload = pyjwt.utils.base64url_encode(pyjwt.api_jws.json.dumps(claims()).encode()).decode()
        signature = pyjwt.utils.base64url_encode(
            hmac.new(material, f"{header}.{payload}".encode(), hashlib.sha256).digest()).decode()
        assert me(client, f"{header}.{payload}.{signature}") == "invalid_token"


def test_a_withdrawn_key_stops_working_for_tokens_already_seen(client, jwks, app):
    # A compromised key is taken out of the JWKS: once this worker's copy of the key set is
    # refreshed, a token it verified (and cached) before must be refused like any other.
    withdrawn = jwks.publish(SigningKey("EdDSA", "compromised"))
    token = withdrawn.sign(claims())
    assert me(client, token) == 200
    jwks.keys = []
    jwks.publish(SigningKey("EdDSA", "replacement"))
    assert me(client, token) == 200  # the key set in memory is still fresh
    keys = services(app).keys
    keys.loaded_at -= 10_000  # the cached key set has gone stale
    stale = keys.loaded_at
    me(client, token)  # answered with the keys at hand, while they are refreshed in the background
    wait_until(lambda: keys.loaded_at != stale, 5, "the background refresh")
    assert me(client, token) == "invalid_token"
    assert me(client, withdrawn.sign(claims("bob"))) == "invalid_token"
