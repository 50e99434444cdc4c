"""A Redis that comes back older than the table, in one process, in orders the fleet tests
(tests/integration/test_redis_topologies.py) reach only by chance: whatever the first answer
over the new connection says, no bucket of the older Redis is trusted before it is verified."""

from __future__ import annotations

import uuid

import pytest

from app.revocation.layout import bucket_of
from tests.conftest import bearer, me

pytestmark = pytest.mark.integration


@pytest.fixture
def settings_overrides(redis_node):
    # No periodic read of the table's sequences: only the new connection can tell this
    # instance that Redis went back.
    return {"REDIS_URL": redis_node.url, "REVOCATION_SYNC_SECONDS": "60"}




def jti_outside_bucket_of(user_id: str) -> str:
    while bucket_of(jti := uuid.uuid4().hex) == bucket_of(user_id):
        pass
    return jti


def test_a_stale_bucket_seen_over_a_new_connection_does_not_vouch_for_the_others(
        make_app, make_token, redis_node):
    """The older Redis's first answer names one bucket behind this instance's floor (the user's);
    the token's own bucket is behind too, but this instance never saw it ahead."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    this, other = make_app().test_client(), make_app().test_client()
    revoked = make_token(user, jti=jti_outside_bucket_of(user))
    known, logged_out = make_token(user, drop=("jti",)), make_token(user, drop=("jti",), name="Other")
    assert me(this, revoked) == 200
    snapshot = redis_node.snapshot()

    # The other instance revokes, in the user's bucket and in the jti's bucket.
    assert other.post("/api/v1/auth/logout", headers=bearer(logged_out)).status_code == 204
    assert other.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
    assert me(this, known) == 200  # this instance now knows the user's bucket reached the table
    redis_node.restart_from(snapshot)

    assert me(this, revoked) in ("token_revoked", "service_unavailable")
    assert me(this, revoked) == "token_revoked"
    assert me(this, logged_out) == "token_revoked"
    assert me(this, known) == 200
