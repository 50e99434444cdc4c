"""CONTRACT §3 through the HTTP API and the CLI, on the in-process store (fakeredis)."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from redis.exceptions import ResponseError

from app.revocation import layout
from app.revocation.layout import BUCKETS, bucket_of
from app.revocation.targets import RevocationTarget
from app.services import services
from tests.conftest import SECRET, answer, bearer, encode, me
from tests.support.clock import next_second

# Every route on both databases: PostgreSQL runs reads on psycopg's cursor (app/db.py).
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def admin(as_user):
    return as_user("root", role="admin")



def stored(store, owner: str, field: str) -> str | None:
    """One field of the bucket hash `owner` belongs to."""
    return store.client.client.hget(store.layout.bucket(bucket_of(owner)), field)


def audit_rows(app) -> list[dict]:
    return [dict(r._mapping) for r in services(app).database.rows(sa.text("SELECT * FROM revocations ORDER BY id"))]


def test_logout_revokes_this_token_only(client, make_token):
    token, other = make_token("alice"), make_token("alice")
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert me(client, token) == "token_revoked"
    assert answer(client.get("/api/v1/tasks", headers=bearer(token))) == "token_revoked"
    assert me(client, other) == 200


def test_logout_of_a_token_without_jti_catches_re_encoded_and_re_signed_copies(client, make_token):
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 600, "email": "a@example.com", "n": 1}
    token = encode(claims)
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    header, payload, signature = token.split(".")
    padded = f"{header}.{payload}.{signature}="  # PyJWT accepts "=" padding on the signature
    reordered = encode(dict(reversed(list(claims.items()))))
    spaced_payload = base64.urlsafe_b64encode(json.dumps(claims, indent=2).encode()).rstrip(b"=").decode()
    import hashlib
    import hmac

    signing_input = f"{header}.{spaced_payload}"
    resigned = f"{signing_input}.{base64.urlsafe_b64encode(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()).rstrip(b'=').decode()}"  # noqa: E501
    for copy in (token, reordered, resigned):
        assert me(client, copy) == "token_revoked"
    assert me(client, padded) == "token_revoked"
    assert me(client, encode({**claims, "exp": now + 601})) == 200  # different claims, different token


def test_logging_out_one_jti_less_token_never_revokes_another(client):
    now = int(time.time())
    base = {"sub": "alice", "iat": now, "exp": now + 600}
    named, plain = encode({**base, "nickname": "nickname"}), encode(base)
    assert me(client, named) == 200 and me(client, plain) == 200
    assert client.post("/api/v1/auth/logout", headers=bearer(named)).status_code == 204
    assert me(client, named) == "token_revoked"
    assert me(client, plain) == 200
    for claim in ("type", "fresh"):  # names a JWT library might add defaults for
        token = encode({**base, "n": claim, claim: claim if claim == "type" else False})
        if me(client, token) == 200:
            assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
            assert me(client, plain) == 200


def test_logout_everywhere_revokes_every_earlier_token(client, make_token):
    now = int(time.time())
    old = make_token("alice", iat=now - 100)
    current = make_token("alice")
    response = client.post("/api/v1/auth/logout", json={"everywhere": True}, headers=bearer(current))
    assert response.status_code == 204
    assert me(client, old) == "token_revoked" and me(client, current) == "token_revoked"
    assert me(client, make_token("alice", iat=now + 2)) == 200  # minted after the cutoff
    assert me(client, make_token("bob")) == 200


def test_admin_revokes_a_user(client, make_token, admin):
    now = int(time.time())
    earlier = make_token("alice", iat=now - 5)
    response = client.post("/api/v1/admin/users/alice/revoke", json={"reason": "stolen laptop"}, headers=admin)
    assert response.status_code == 200
    body = response.get_json()
    assert body["user_id"] == "alice" and body["revoked_before"].endswith("Z")
    assert me(client, earlier) == "token_revoked"
    assert me(client, make_token("alice", iat=now + 2)) == 200


def test_a_token_issued_ahead_of_the_clock_does_not_survive_logout_everywhere(client, make_token):
    now = int(time.time())
    ahead = make_token("alice", iat=now + 20, exp=now + 900)  # an issuer clock 20 s fast
    assert me(client, ahead) == 200
    assert client.post("/api/v1/auth/logout", json={"everywhere": True},
                       headers=bearer(make_token("alice"))).status_code == 204
    assert me(client, ahead) == "token_revoked"
    next_second()
    assert me(client, make_token("alice")) == 200  # a token minted after it, by a right clock


def test_a_token_issued_ahead_of_the_clock_does_not_survive_an_admin_revoking_the_user(client, make_token, as_user):
    now = int(time.time())
    ahead = make_token("bob", iat=now + 20, exp=now + 900, drop=("jti",))
    assert me(client, ahead) == 200
    assert client.post("/api/v1/admin/users/bob/revoke", headers=as_user("root", role="admin")).status_code == 200
    assert me(client, ahead) == "token_revoked"
    next_second()
    assert me(client, make_token("bob")) == 200


def test_a_later_cutoff_is_never_lowered(store):
    now = time.time()
    later = RevocationTarget("user", "alice", now + 1000, "alice", cutoff=now)
    earlier = RevocationTarget("user", "alice", now + 1000, "alice", cutoff=now - 1000)
    store.revoke(later, "test", None)
    store.revoke(earlier, "test", None)
    assert float(stored(store, "alice", layout.cutoff_field("alice")).split()[1]) == pytest.approx(now)


def test_admin_revokes_a_session(client, make_token, admin):
    in_session, other_session = make_token("alice", sid="s-1"), make_token("alice", sid="s-2")
    assert client.post("/api/v1/admin/sessions/s-1/revoke", headers=admin).status_code == 200
    assert me(client, in_session) == "token_revoked"
    assert me(client, other_session) == 200


def test_admin_revokes_a_token_by_jti_and_by_token(client, make_token, admin):
    by_jti, by_token = make_token("alice", jti="jti-1"), encode({"sub": "bob", "iat": int(time.time()),
                                                                  "exp": int(time.time()) + 60})
    assert client.post("/api/v1/admin/tokens/revoke", json={"jti": "jti-1"}, headers=admin).get_json() == {
        "revoked": "jti", "target": "jti-1"}
    assert client.post("/api/v1/admin/tokens/revoke", json={"token": by_token}, headers=admin).status_code == 200
    assert me(client, by_jti) == "token_revoked" and me(client, by_token) == "token_revoked"


@pytest.mark.parametrize("body", [{}, {"jti": "a", "token": "b"}, {"token": "not.a.token"}, {"jti": ""},
                                  {"jti": 5}, {"token": "x.y.z", "extra": 1}])
def test_admin_token_revocation_validates_its_body(client, admin, body):
    response = client.post("/api/v1/admin/tokens/revoke", json=body, headers=admin)
    assert response.status_code == 422
    assert response.get_json()["code"] == "validation_error"


@pytest.mark.parametrize("method,path", [
    ("POST", "/api/v1/admin/users/bob/revoke"), ("POST", "/api/v1/admin/sessions/s/revoke"),
    ("POST", "/api/v1/admin/tokens/revoke"), ("GET", "/api/v1/admin/revocations"),
])
def test_admin_routes_are_forbidden_to_users(client, app, as_user, method, path):
    response = client.open(path, method=method, json={"jti": "x"}, headers=as_user("alice"))
    assert response.status_code == 403 and response.get_json()["code"] == "forbidden"
    assert client.open(path, method=method, json={"jti": "x"}).status_code == 401
    assert audit_rows(app) == []


def test_audit_log_is_newest_first_filtered_and_paginated(client, admin, make_token):
    client.post("/api/v1/admin/users/alice/revoke", json={"reason": "r1"}, headers=admin)
    client.post("/api/v1/admin/sessions/s-9/revoke", headers=admin)
    client.post("/api/v1/auth/logout", headers=bearer(make_token("bob")))
    records = client.get("/api/v1/admin/revocations", headers=admin)
    assert records.headers["X-Total-Count"] == "3"
    kinds = [r["kind"] for r in records.get_json()]
    assert kinds == ["jti", "session", "user"]
    first = records.get_json()[2]
    assert first["actor"] == "admin:root" and first["reason"] == "r1" and first["user_id"] == "alice"
    filtered = client.get("/api/v1/admin/revocations?user_id=bob", headers=admin).get_json()
    assert [r["actor"] for r in filtered] == ["user:bob"]
    page = client.get("/api/v1/admin/revocations?limit=1&offset=1", headers=admin).get_json()
    assert [r["kind"] for r in page] == ["session"]


def test_entries_expire_with_the_last_token_they_affect(client, store, make_token, admin):
    now = int(time.time())
    token = make_token("alice", jti="short", iat=now, exp=now + 120)
    client.post("/api/v1/auth/logout", headers=bearer(token))
    assert 120 <= float(stored(store, "short", layout.jti_field("short"))) - now <= 120 + 31
    client.post("/api/v1/admin/users/alice/revoke", headers=admin)
    assert float(stored(store, "alice", layout.cutoff_field("alice")).split()[0]) - now >= 604800


def test_denylist_is_rebuilt_after_redis_loses_its_data(client, app, store, make_token, admin):
    now = int(time.time())
    logged_out, old_session, old_user = make_token("alice"), make_token("carol", sid="s-1"), make_token(
        "bob", iat=now - 10)
    client.post("/api/v1/auth/logout", headers=bearer(logged_out))
    client.post("/api/v1/admin/sessions/s-1/revoke", headers=admin)
    client.post("/api/v1/admin/users/bob/revoke", headers=admin)
    store.client.client.flushall()
    assert me(client, logged_out) == "token_revoked"
    assert me(client, old_session) == "token_revoked"
    assert me(client, old_user) == "token_revoked"
    assert me(client, make_token("bob", iat=now + 2)) == 200
    assert all(store.client.hget_many([store.layout.bucket(b) for b in range(BUCKETS)], "state"))


def test_a_redis_write_that_fails_after_the_commit_is_a_503_and_the_next_request_repairs_it(
        client, app, store, make_token, monkeypatch):
    token = make_token("alice")
    assert me(client, token) == 200
    real_run = store.client.run

    def refuse_applies(call):
        if call.script == "apply":
            raise ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        return real_run(call)

    monkeypatch.setattr(store.client, "run", refuse_applies)
    response = client.post("/api/v1/auth/logout", headers=bearer(token))
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
    assert [row["kind"] for row in audit_rows(app)] == ["jti"]  # committed first
    monkeypatch.undo()
    assert me(client, token) == "token_revoked"  # the next check found the gap and repaired it


def test_a_commit_that_fails_leaves_no_row_and_no_denial(client, app, store, make_token, monkeypatch):
    from sqlalchemy.exc import OperationalError

    token = make_token("alice")
    assert me(client, token) == 200

    def refuse(*_args, **_kwargs):
        raise OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(store.records.database, "rows", refuse)
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 503
    monkeypatch.undo()
    assert audit_rows(app) == []
    assert me(client, token) == 200


def test_cli_revocations_are_recorded_as_the_cli(app, client, make_token):
    runner = app.test_cli_runner()
    now = int(time.time())
    user_token, session_token = make_token("alice", iat=now - 5), make_token("bob", sid="cli-s")
    jti_token, raw_token = make_token("carol", jti="cli-j"), encode({"sub": "dave", "iat": now, "exp": now + 60})
    for args in (["revoke", "user", "alice", "--reason", "offboarding"], ["revoke", "session", "cli-s"],
                 ["revoke", "token", "cli-j"], ["revoke", "token", raw_token]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("revoked ")
    for token in (user_token, session_token, jti_token, raw_token):
        assert me(client, token) == "token_revoked"
    rows = audit_rows(app)
    assert {r["actor"] for r in rows} == {"cli"} and rows[0]["reason"] == "offboarding"
    assert runner.invoke(args=["revoke", "token", "a.b.c"]).exit_code != 0


def test_cli_verify_rebuilds_what_redis_lost_before_any_request_and_says_how_much(app, client, store, make_token):
    token, runner = make_token("alice"), app.test_cli_runner()
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    store.client.client.flushall()
    result = runner.invoke(args=["revoke", "verify"])
    assert result.exit_code == 0 and f"{BUCKETS} buckets, {BUCKETS} repaired" in result.output, result.output
    assert all(store.client.hget_many([store.layout.bucket(b) for b in range(BUCKETS)], "state"))
    assert me(client, token) == "token_revoked"
    again = runner.invoke(args=["revoke", "verify"])
    assert again.exit_code == 0 and again.output.endswith(f"{BUCKETS} buckets, 0 repaired\n"), again.output


def test_prune_deletes_what_can_no_longer_matter_and_keeps_each_bucket_sequence(app, client, store, make_token):
    now = time.time()
    old = [RevocationTarget("jti", f"old-{n}", now - 40 * 86400, "alice") for n in range(3)]
    for target in old:
        store.revoke(target, "test", None)
    recent = store.revoke(RevocationTarget("jti", "recent-expired", now - 86400, "alice"), "test", None)
    live = make_token("alice", jti="live")
    assert client.post("/api/v1/auth/logout", headers=bearer(live)).status_code == 204
    result = app.test_cli_runner().invoke(args=["revoke", "prune", "--keep-days", "30"])
    assert result.exit_code == 0, result.output
    remaining = {row["target"] for row in audit_rows(app)}
    # Expired 40 days ago: gone, unless it holds its bucket's last sequence.
    tops = {bucket_of(t.value): max(r["seq"] for r in audit_rows(app) if r["bucket"] == bucket_of(t.value))
            for t in old}
    for target in old:
        kept = any(r["target"] == target.value and r["seq"] == tops[bucket_of(target.value)]
                   for r in audit_rows(app))
        assert (target.value in remaining) is kept
    assert {"recent-expired", "live"} <= remaining
    assert f"deleted {3 - sum(t.value in remaining for t in old)} " in result.output
    next_one = store.revoke_jti(f"after-prune-{recent.bucket}", "test")
    assert next_one.seq > 0 and me(client, live) == "token_revoked"


@pytest.mark.parametrize("path", ["/api/v1/admin/users/al%0Aice/revoke", "/api/v1/admin/sessions/s%0A1/revoke",
                                  "/api/v1/admin/users/al%09ice/revoke"])
def test_an_id_with_a_control_character_is_a_422_like_any_other_bad_id(client, admin, path):
    response = client.post(path, headers=admin)
    assert response.status_code == 422 and response.get_json()["code"] == "validation_error", response.get_data()


@pytest.mark.parametrize("path", ["/api/v1/admin/users/{id}/revoke", "/api/v1/admin/sessions/{id}/revoke"])
@pytest.mark.parametrize("bad_id", ["x" * 256, "a\x00b", "a\x07b", "tab\there"])
def test_an_id_no_token_could_carry_is_a_422(client, as_user, path, bad_id):
    response = client.post(path.format(id=quote(bad_id, safe="")), headers=as_user("root", role="admin"))
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["code"] == "validation_error"


@pytest.mark.parametrize("odd_id", ["team/alice", "//leading", "a%2Fb", "x" * 255, "ünï cödé"])
def test_every_id_a_token_can_carry_can_be_revoked(client, make_token, as_user, odd_id):
    admin = as_user("root", role="admin")
    user_token, session_token = make_token(odd_id), make_token("carol", sid=odd_id)
    assert me(client, user_token) == 200 and me(client, session_token) == 200
    assert client.post(f"/api/v1/admin/users/{quote(odd_id, safe='')}/revoke", headers=admin).status_code == 200
    assert client.post(f"/api/v1/admin/sessions/{quote(odd_id, safe='')}/revoke", headers=admin).status_code == 200
    assert me(client, user_token) == "token_revoked" and me(client, session_token) == "token_revoked"
