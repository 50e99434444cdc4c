"""The per-worker cache of verified tokens skips only work whose answer cannot change:
expiry, maximum age and revocation are checked on every request."""

from __future__ import annotations

import time

import pytest

from app import gate
from app.config import load_settings
from app.errors import TokenRejected
from app.security import policy
from app.security.tokens import Principal
from app.security.verified_tokens import VerifiedTokens
from tests.conftest import bearer


@pytest.fixture
def verifications(monkeypatch):
    calls = []
    original = policy.verify
    monkeypatch.setattr(gate.policy, "verify", lambda *args: calls.append(1) or original(*args))
    return calls


def test_a_repeat_token_is_not_verified_again(client, make_token, verifications):
    token = make_token("alice")
    for _ in range(3):
        assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    assert len(verifications) == 1


def test_a_cached_token_still_expires(client, make_token, monkeypatch):
    now = int(time.time())
    token = make_token("alice", iat=now, exp=now + 60)
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    monkeypatch.setattr(gate.time, "time", lambda: now + 60 + 31)
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_expired"


def test_a_cached_token_still_ages_out(client, make_token, monkeypatch):
    now = int(time.time())
    token = make_token("alice", iat=now, exp=now + 30 * 86400)
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    monkeypatch.setattr(gate.time, "time", lambda: now + 7 * 86400 + 1)
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_expired"


def test_a_cached_token_is_still_checked_for_revocation(client, make_token, as_user):
    token = make_token("alice", sid="s-1")
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    client.post("/api/v1/admin/sessions/s-1/revoke", headers=as_user("root", role="admin"))
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_revoked"


def test_the_cache_is_bounded_and_entries_have_a_lifetime(tmp_path):
    cache = VerifiedTokens(size=2, ttl=10)
    settings = load_settings({"APP_ENV": "testing", "BETTER_AUTH_SECRET": "x" * 40}, tmp_path)
    principal = Principal(user_id="u", subject="u", email=None, name=None, role=None, is_admin=False, jti=None,
                          sid=None, iat=1000.0, exp=5000.0, claims={})
    for token in ("a", "b", "c"):
        cache.put(token, principal, 1000.0)
    assert cache.get("a", settings, 1001.0) is None  # evicted, least recently used
    assert cache.get("c", settings, 1005.0) is principal
    assert cache.get("c", settings, 1011.0) is None  # older than its lifetime
    cache.put("d", principal, 5025.0)
    with pytest.raises(TokenRejected):  # expired since (exp 5000 + the leeway)
        cache.get("d", settings, 5000.0 + settings.leeway_seconds + 1)
