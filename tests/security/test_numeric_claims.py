"""Any number a JSON parser can produce, in a token's date claims (`iat`, `exp`, `nbf`), is a
clear answer: 401 on the API (invalid_token, or token_expired for a real but past date), 400
invalid_request on the back-channel receiver, 422 where an admin revokes the token; never a 500,
and each refusal counts against the IP's failed-authentication limit (SECURITY.md)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import bearer
from tests.support.attacks import assert_problem, b64, hs256
from tests.support.clock import now

# Every JSON number: any sign, any number of digits, a fraction, an exponent of any size.
JSON_NUMBERS = st.from_regex(r"\A-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?\Z")
PYTHON_NUMBERS = st.one_of(st.integers(), st.integers(-(10**450), 10**450), st.floats()).map(
    lambda number: repr(int(number)) if isinstance(number, int) else (
        "NaN" if number != number else "Infinity" if number == float("inf") else
        "-Infinity" if number == float("-inf") else repr(number)))
NUMBERS = st.one_of(JSON_NUMBERS, PYTHON_NUMBERS, st.sampled_from(["-1e400", "1e400", "-0", "-10" + "0" * 400]))
CLAIMS = st.sampled_from(["iat", "exp", "nbf"])
HEADER = b'{"alg":"HS256","typ":"JWT"}'
ADMIN_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def token_with(claim: str, literal: str, signed: bool) -> str:
    """A token whose `claim` is the JSON number `literal`, written as is; signed with the
    service's secret, or with a signature nobody made."""
    t = now()
    dates = {"iat": str(t), "exp": str(t + 900), "nbf": str(t - 1), claim: literal}
    payload = ('{"sub":"alice","jti":"j-1",' + ",".join(f'"{name}":{value}' for name, value in dates.items())
               + "}").encode()
    token = hs256(HEADER, payload)
    return token if signed else f"{token.rsplit('.', 1)[0]}.{b64(b'not a signature')}"


@given(claim=CLAIMS, literal=NUMBERS, signed=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_number_in_a_date_claim_is_a_401_never_a_500(client, claim, literal, signed):
    response = client.get("/api/v1/auth/me", headers=bearer(token_with(claim, literal, signed)))
    if response.status_code == 200:  # an ordinary date this service accepts
        assert signed, literal
        return
    body = assert_problem(response, 401, response.get_json()["code"])
    assert body["code"] in ("invalid_token", "token_expired"), body


@given(claim=st.sampled_from(["iat", "exp"]), literal=NUMBERS)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_back_channel_receiver_answers_400_to_any_number(client, claim, literal):
    t = now()
    dates = {"iat": str(t), "exp": str(t + 120), claim: literal}
    payload = ('{"iss":"x","aud":"y","jti":"l-1","sub":"alice","events":'
               '{"http://schemas.openid.net/event/backchannel-logout":{}},'
               + ",".join(f'"{name}":{value}' for name, value in dates.items()) + "}").encode()
    logout_token = hs256(b'{"alg":"HS256","typ":"logout+jwt"}', payload)
    response = client.post("/api/v1/auth/backchannel-logout", data={"logout_token": logout_token})
    assert response.status_code in (200, 400), (response.status_code, response.get_data()[:300])


@given(claim=CLAIMS, literal=NUMBERS)
@ADMIN_SETTINGS
def test_an_admin_revoking_a_token_with_any_number_gets_a_clear_answer(client, as_user, claim, literal):
    response = client.post("/api/v1/admin/tokens/revoke", json={"token": token_with(claim, literal, True)},
                           headers=as_user("root", role="admin"))
    assert response.status_code in (200, 422), (response.status_code, response.get_data()[:300])


class TestTheFailureLimit:
    @pytest.fixture
    def settings_overrides(self):
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_AUTH_FAILURES": "5/minute",
                "RATE_LIMIT_USER": "1000/minute"}

    @pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
    def test_such_tokens_count_against_the_ip_failure_limit(self, client, claim):
        token = token_with(claim, "-1" + "0" * 400, False)
        codes = [client.get("/api/v1/auth/me", headers=bearer(token)).status_code for _ in range(6)]
        assert codes == [401] * 5 + [429], codes

    def test_an_admin_revoking_such_tokens_counts_against_the_same_limit(self, client, as_user):
        """The revoke route says whether a token is valid: it must not be an unlimited oracle."""
        token = token_with("iat", "-1" + "0" * 400, False)
        codes = [client.post("/api/v1/admin/tokens/revoke", json={"token": token},
                             headers=as_user("root", role="admin")).status_code for _ in range(6)]
        assert codes == [422] * 5 + [429], codes
