"""What the attack and property suites (tests/security/) share: JWS built by hand, byte by byte,
and the checks of what taskgate answers them (a problem document, in time, nothing written)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import sqlalchemy as sa

from app.services import services
from tests.conftest import SECRET
from tests.support.clock import now

PROBLEM = "application/problem+json"
MAX_SECONDS = 2.0


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def claims(user_id: str = "alice", **extra: Any) -> dict[str, Any]:
    t = now()
    return {"sub": user_id, "iat": t, "exp": t + 900, "jti": f"jti-{user_id}-{t}", **extra}


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def hs256(header: bytes, payload: bytes, key: bytes | str = SECRET) -> str:
    """A JWS over the exact header and payload bytes, HMAC-SHA256 with `key`."""
    key = key.encode() if isinstance(key, str) else key
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def valid_token(user_id: str = "alice", **extra: Any) -> str:
    return hs256(b'{"alg":"HS256","typ":"JWT"}', js(claims(user_id, **extra)))


def rows(app, table: str) -> int:
    engine = services(app).database.engine
    with engine.connect() as connection:
        return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608


def timed(client, method: str, url: str, **kwargs: Any):
    started = time.perf_counter()
    response = client.open(url, method=method, **kwargs)
    elapsed = time.perf_counter() - started
    assert elapsed < MAX_SECONDS, f"{method} {url} took {elapsed:.2f}s"
    return response


def assert_problem(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data()[:500])
    assert response.mimetype == PROBLEM, response.mimetype
    body = json.loads(response.get_data())
    assert body["status"] == status
    assert body["code"] == code, body
    assert set(body) >= {"type", "title", "status", "detail", "code"}
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    return body
